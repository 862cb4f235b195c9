"""Pure processing of one OTLP/HTTP ``/v1/traces`` body: bounded decompression → decode → normalize.

Runs in worker processes (picklable arguments and result), so it imports nothing of the web stack. The caller's
size limit applies to the decompressed body too: :class:`BodyTooLarge` (HTTP 413) is raised as soon as the
output passes it, without inflating the rest (a decompression-bomb guard).
"""

from __future__ import annotations

import gc
import io
import zlib

import zstandard

from ingest.decode import DecodeError, decode_bytes
from ingest.pipeline import ChunkOutput, process_decoded
from ingest.records import Quarantined
from models.schema import LLM_CALLS_SCHEMA

ENCODINGS = ("identity", "gzip", "x-gzip", "deflate", "zstd")
MEDIA_TYPES = ("application/json", "application/x-protobuf", "application/protobuf")


class BodyTooLarge(DecodeError):
    """The (decompressed) body is larger than the receiver accepts."""


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


def _inflate(data: bytes, wbits: int, limit: int, name: str) -> bytes:
    out, rest = bytearray(), data
    while rest:  # gzip allows several concatenated members
        inflater = zlib.decompressobj(wbits=wbits)
        out += inflater.decompress(rest, limit + 1 - len(out))
        if len(out) > limit:
            raise BodyTooLarge(f"decompressed body exceeds {limit} bytes")
        if not inflater.eof:
            raise DecodeError(f"truncated {name} body")
        rest = inflater.unused_data
    return bytes(out)


def decompress(data: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` with at most ``limit`` output bytes."""
    encoding = (encoding or "identity").strip().lower()
    try:
        if encoding in ("identity", ""):
            body = data
        elif encoding == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
                body = reader.read(limit + 1)
        elif encoding == "deflate":
            try:  # RFC 9110 deflate is zlib-wrapped; some clients send the raw stream
                body = _inflate(data, 15, limit, encoding)
            except zlib.error:
                body = _inflate(data, -15, limit, encoding)
        else:
            body = _inflate(data, 31, limit, encoding)
    except (zlib.error, zstandard.ZstdError) as exc:
        raise DecodeError(f"invalid {encoding} body: {exc}") from None
    if len(body) > limit:
        raise BodyTooLarge(f"decompressed body exceeds {limit} bytes")
    return body


def process_body(data: bytes, *, source: str, content_type: str, content_encoding: str | None, limit: int,
                 tenant_attribute: str | None) -> ChunkOutput:  # fmt: skip
    """Decode and normalize one request body. Raises :class:`DecodeError` (or a subclass) if unusable as a whole."""
    check_headers(content_type, content_encoding)
    body = decompress(data, content_encoding, limit)
    # As in ingest.pipeline.process_chunk: the walk makes many short-lived, acyclic containers that the cyclic
    # GC would rescan again and again.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return process_decoded(decode_bytes(body, source, content_type), source, len(body), tenant_attribute)
    finally:
        if was_enabled:
            gc.enable()


def quarantined_body(data: bytes, *, source: str, content_type: str, content_encoding: str | None,
                     reason: str) -> ChunkOutput:  # fmt: skip
    """An undecodable request body as one quarantined record, kept as received (compressed or not).

    The sender is told 400 (do not retry), so this copy is the only one left: it stays inspectable and can be
    re-driven once the decoder learns the input (a whole body re-decodes with its format and gzip/zstd sniffed).
    """
    where = f"request body ({media_type(content_type)}, {(content_encoding or 'identity').strip().lower()})"
    return ChunkOutput(source=source, calls=LLM_CALLS_SCHEMA.empty_table(),
                       quarantined=[Quarantined(source, where, reason, data)], spans_seen=0, non_llm_skipped=0,
                       conventions={}, size=len(data))  # fmt: skip
