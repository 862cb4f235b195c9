"""Pure processing of one OTLP/HTTP ``/v1/traces`` body: bounded decompression → decode → normalize.

Runs in worker processes (picklable arguments and result), so it imports nothing of the web stack. The caller's
size limit applies to the decompressed body too: :class:`BodyTooLarge` (HTTP 413) is raised as soon as the
output passes it, without inflating the rest (a decompression-bomb guard).
"""

from __future__ import annotations

import gc

from spanprism.ingest.decode import DecodeError, decode_bytes, undo_content_encoding
from spanprism.ingest.limits import Limits
from spanprism.ingest.pipeline import process_decoded
from spanprism.ingest.records import Batch, Quarantined
from spanprism.models.schema import LLM_CALLS_SCHEMA

ENCODINGS = ("identity", "gzip", "x-gzip", "deflate", "zstd")
MEDIA_TYPES = ("application/json", "application/x-protobuf", "application/protobuf")


class UnsupportedMedia(DecodeError):
    """A content type or content encoding the receiver does not speak (HTTP 415)."""


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_headers(content_type: str | None, content_encoding: str | None) -> None:
    """Raise :class:`UnsupportedMedia` for a content type or encoding outside OTLP/HTTP."""
    if media_type(content_type) not in MEDIA_TYPES:
        raise UnsupportedMedia(f"unsupported content type {content_type!r}: use application/x-protobuf or "
                               "application/json")  # fmt: skip
    if (content_encoding or "identity").strip().lower() not in ENCODINGS:
        raise UnsupportedMedia(f"unsupported content encoding {content_encoding!r}: use gzip, deflate or zstd")


def process_body(data: bytes, *, source: str, content_type: str, content_encoding: str | None, limit: int,
                 tenant_attribute: str | None, limits: Limits | None = None) -> Batch:  # fmt: skip
    """Decode and normalize one request body. Raises :class:`DecodeError` (or a subclass) if unusable as a whole.

    ``limit`` caps the decompressed body; ``limits`` bounds the calls (text lengths, start times).
    """
    check_headers(content_type, content_encoding)
    body = undo_content_encoding(data, content_encoding, limit)
    # As in spanprism.ingest.pipeline.process_chunk: the walk makes many short-lived, acyclic containers that the cyclic
    # GC would rescan again and again.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return process_decoded(decode_bytes(body, source, content_type), source, len(body), tenant_attribute, limits)
    except DecodeError:
        raise
    except Exception as exc:  # a body the decoder trips on is the client's problem (400, kept), never a 500
        raise DecodeError(f"decode failed: {type(exc).__name__}: {exc}") from None
    finally:
        if was_enabled:
            gc.enable()


def quarantined_body(data: bytes, *, source: str, content_type: str, content_encoding: str | None,
                     reason: str) -> Batch:  # fmt: skip
    """An undecodable request body as one quarantined record, kept as received (compressed or not).

    The sender is told 400 (do not retry), so this copy is the only one left: it stays inspectable and can be
    re-driven once the decoder learns the input (a whole body re-decodes with its format and gzip/zstd sniffed).
    """
    where = f"request body ({media_type(content_type)}, {(content_encoding or 'identity').strip().lower()})"
    return Batch(source=source, calls=LLM_CALLS_SCHEMA.empty_table(),
                 quarantined=[Quarantined(source, where, reason, data)], spans_seen=0, size=len(data))  # fmt: skip
