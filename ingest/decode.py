"""Decode stage: input bytes → :class:`SpanRecord` dicts (plus :class:`Quarantined` items).

Three steps, each usable on its own: :func:`open_input` undoes whole-stream compression, :func:`iter_chunks`
sniffs the format and cuts the stream into bounded :class:`RawChunk` s of whole records (memory stays bounded
by ``chunk_bytes``/``max_record_bytes`` whatever the file size), and :func:`decode_chunk` (pure, picklable
input, safe in worker processes) turns one chunk into spans. :func:`decode_bytes` is the OTLP/HTTP entry point.

=================  ==========================================  =============================================
format             what it is                                  detected by
=================  ==========================================  =============================================
(gzip)             any format below, gzip-compressed           magic ``1f 8b``; undone by ``open_input``
(zstd)             any format below as one zstd stream         magic ``28 b5 2f fd``; undone by ``open_input``
                   (Collector ``nativeCompression`` gate)
``jsonl``          one ExportTraceServiceRequest JSON per      text starting with ``{`` whose first line parses
                   line (Collector file exporter default)      alone, or whose next line opens an object at
                                                               column 0; or any of the next 16 lines is an
                                                               OTLP request object (a damaged first line)
``json``           one JSON document, possibly pretty-         text starting with ``{``/``[`` whose first line
                   printed (or a list of them)                 is not a complete value
``proto``          one serialized ExportTraceServiceRequest    binary, first byte ``0a`` (field 1, bytes)
``proto_lp``       4-byte big-endian length-prefixed records   ``0a`` (or an empty record) after the prefix
                   (Collector ``format: proto``)
``proto_lp_zstd``  the same, each record zstd-compressed on    zstd magic after the 4-byte prefix
                   its own (legacy ``compression: zstd``);
                   inside each record JSON or protobuf
=================  ==========================================  =============================================

Anything else yields one quarantined item ("unrecognized input"). Blank lines and a UTF-8 BOM are ignored.
"""

from __future__ import annotations

import gc
import io
import os
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import orjson
import zstandard

from spanprism.ingest import otlp_json, otlp_proto
from spanprism.ingest.framing import (
    GZIP_MAGIC,
    PREFIX_BYTES,
    ZSTD_MAGIC,
    Buffer,
    Joined,
    RejectedChunk,
    iter_length_prefixed,
    iter_lines,
    iter_whole,
    read_up_to,
)
from spanprism.ingest.inflate import BodyTooLarge, Inflater, InputTooLarge, inflate_bytes
from spanprism.ingest.otlp_json_values import DecodeError, show
from spanprism.ingest.records import DecodeResult, Quarantined, RawChunk, SpanRecord
from spanprism.ingest.sniff import WHITESPACE, sniff

__all__ = [
    "SUPPORTED_FORMATS",
    "BodyTooLarge",
    "DecodeError",
    "InputTooLarge",
    "RejectedChunk",
    "decode_bytes",
    "decode_chunk",
    "iter_chunks",
    "open_input",
    "sniff",
    "stream_damage",
    "undo_content_encoding",
]

SUPPORTED_FORMATS: tuple[str, ...] = ("jsonl", "json", "proto", "proto_lp", "proto_lp_zstd")
# Decompressed size cap for one legacy zstd record or one HTTP body: decode_chunk is pure and the chunk does
# not carry the caller's limit, so the default max_record_bytes applies (a decompression bomb guard).
MAX_DECOMPRESSED_BYTES = 64 << 20
_SNIFF_BYTES = 64 << 10
_BOM = b"\xef\xbb\xbf"


def open_input(source: str | os.PathLike[str] | BinaryIO, limit: int | None = None) -> BinaryIO:
    """Open a path, or wrap a binary stream, undoing gzip or standard zstd compression on the fly (streaming).

    A compressed stream is read through an :class:`Inflater`: it stops at damage (see :func:`stream_damage`) and
    raises :class:`InputTooLarge` once it has inflated more than ``limit`` bytes.
    """
    owned: list[BinaryIO] = []
    if isinstance(source, str | os.PathLike):
        stream: BinaryIO = open(source, "rb")  # noqa: SIM115 - closed by the returned wrapper
        owned.append(stream)
    else:
        stream = source
    head = read_up_to(stream, 4)
    joined = Joined(head, stream, owned)
    if head.startswith(GZIP_MAGIC):
        # Read-ahead matters: the Inflater reads its input in pieces.
        return io.BufferedReader(Inflater(joined, "gzip", limit), buffer_size=1 << 20)  # type: ignore[return-value]
    if head == ZSTD_MAGIC:  # several frames are read on: the Collector flushes, so a long export holds many
        return io.BufferedReader(Inflater(joined, "zstd", limit), buffer_size=1 << 20)  # type: ignore[return-value]
    return io.BufferedReader(joined, buffer_size=1 << 20)  # type: ignore[return-value]


def stream_damage(stream: BinaryIO) -> tuple[str, int] | None:
    """(reason, compressed byte offset) when ``stream`` (from :func:`open_input`) ended at damage, else None."""
    inflater = getattr(stream, "raw", None)
    if isinstance(inflater, Inflater) and inflater.damage:
        return inflater.damage, inflater.consumed
    return None


def iter_chunks(
    stream: BinaryIO,
    source: str,
    *,
    chunk_bytes: int = 4 << 20,
    max_record_bytes: int = 64 << 20,
    max_records: int | None = None,
    max_decompressed_bytes: int | None = None,
) -> Iterator[RawChunk]:
    """Sniff the stream's format and yield chunks of whole records (see the module docstring); never raises.

    Damage (a compressed stream cut short or corrupt, an unreadable file) ends the input with one
    :class:`RejectedChunk` naming the byte offset and the reason, after every chunk read before it. An input
    over ``max_records`` records or ``max_decompressed_bytes`` inflated bytes ends with a *refused* one.
    """
    try:
        yield from _framed(stream, source, chunk_bytes, max_record_bytes, max_records, max_decompressed_bytes)
    except InputTooLarge as exc:
        yield RejectedChunk(source, "unknown", b"", reason=str(exc), location="input", refused=True)
    except Exception as exc:  # one unreadable input must not end the command (or the server request) with a traceback
        yield RejectedChunk(source, "unknown", b"", reason=f"unreadable input: {type(exc).__name__}: {exc}",
                            location="input")  # fmt: skip


def _framed(stream: BinaryIO, source: str, chunk_bytes: int, max_record_bytes: int, max_records: int | None,
            max_decompressed_bytes: int | None) -> Iterator[RawChunk]:  # fmt: skip
    head = read_up_to(stream, _SNIFF_BYTES)
    if head.startswith(GZIP_MAGIC) or head.startswith(ZSTD_MAGIC):  # not opened with open_input
        stream = open_input(Joined(head, stream, []), max_decompressed_bytes)  # type: ignore[arg-type]
        head = read_up_to(stream, _SNIFF_BYTES)
    for chunk in _records(stream, head, source, chunk_bytes, max_record_bytes):
        if max_records is not None and chunk.first > max_records:
            raise InputTooLarge(f"input holds more than max_records_per_input ({max_records}) records")
        yield chunk
    damage = stream_damage(stream)
    if damage:
        yield RejectedChunk(source, "unknown", b"", reason=damage[0], location=f"byte {damage[1]}")


def _records(stream: BinaryIO, head: bytes, source: str, chunk_bytes: int, max_record_bytes: int
             ) -> Iterator[RawChunk]:  # fmt: skip
    skip = len(_BOM) if head.startswith(_BOM) else 0
    fmt = sniff(head[skip:])
    buffer = Buffer(head, stream, max(chunk_bytes, 1 << 16), start=skip)
    if fmt is None:
        if head.strip(WHITESPACE):
            yield _unrecognized(buffer, source, max_record_bytes)
        return
    if fmt == "jsonl":
        yield from iter_lines(buffer, source, chunk_bytes, max_record_bytes)
    elif fmt in ("proto_lp", "proto_lp_zstd"):
        yield from iter_length_prefixed(buffer, source, fmt, chunk_bytes, max_record_bytes)
    else:
        yield from iter_whole(buffer, source, fmt, max_record_bytes)


def _unrecognized(buffer: Buffer, source: str, limit: int) -> RejectedChunk:
    """The whole unrecognized input as one quarantined record, its bytes kept up to ``limit`` (max_record_bytes)
    so it stays recoverable by redrive; the reason says how big it was and whether all of it was kept."""
    first = buffer.peek(16).hex(" ")
    buffer.fill(limit + 1)
    kept = buffer.peek(limit)
    size = buffer.discard_all()
    where = "kept whole" if size <= limit else f"first {limit} kept (max_record_bytes), the rest only in {source}"
    reason = f"unrecognized input: not OTLP JSON, JSON lines or protobuf (first bytes: {first}); {size} bytes, {where}"
    return RejectedChunk(source, "unknown", kept, reason=reason, location="byte 0")


def decode_chunk(chunk: RawChunk) -> DecodeResult:
    """Decode one chunk (pure): good spans land in ``spans``, each bad line/record/span in ``quarantined``."""
    result = DecodeResult()
    if isinstance(chunk, RejectedChunk):
        result.quarantined.append(Quarantined(chunk.source, chunk.location, chunk.reason, chunk.data))
        return result
    decoder = _DECODERS.get(chunk.fmt)
    if decoder is None:
        result.quarantined.append(
            Quarantined(
                chunk.source, f"byte {chunk.offset}", f"unknown chunk format {chunk.fmt!r}", chunk.data[:PREFIX_BYTES]
            )
        )
        return result
    # The walk allocates dozens of container objects per span and keeps them all; the cyclic GC would
    # rescan them again and again while they are young (measured: decode ~2x slower with it on). Nothing
    # here creates reference cycles, so collection is paused for the walk and restored after.
    enabled = gc.isenabled()
    gc.disable()
    try:
        decoder(chunk, result.spans, result.quarantined)
    finally:
        if enabled:
            gc.enable()
    return result


def _decode_jsonl(chunk: RawChunk, spans: list[SpanRecord], quarantined: list[Quarantined]) -> None:
    source, loads, decode_request = chunk.source, orjson.loads, otlp_json.decode_request
    number = chunk.first - 1
    for line in chunk.data.split(b"\n"):
        number += 1
        if not line or line.isspace():
            continue
        where = f"line {number}"
        try:
            decode_request(loads(line), source, where, spans, quarantined, line)
        except orjson.JSONDecodeError as exc:
            quarantined.append(Quarantined(source, where, json_error_reason(line, exc), line))
        except DecodeError as exc:
            quarantined.append(Quarantined(source, where, str(exc), line))


def json_error_reason(data: bytes, exc: orjson.JSONDecodeError) -> str:
    """A precise reason for a line orjson refused: invalid UTF-8 (with its byte), truncation, or the parser's words."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {bad.start}: {show(data[bad.start : bad.start + 4])}"
    message = str(exc)
    if message.startswith("unexpected end of data"):
        return f"truncated JSON: input ends inside a value after {len(data)} bytes"
    return f"invalid JSON: {message}"


def _decode_document(chunk: RawChunk, spans: list[SpanRecord], quarantined: list[Quarantined]) -> None:
    try:
        doc = orjson.loads(chunk.data)
    except orjson.JSONDecodeError as exc:
        quarantined.append(Quarantined(chunk.source, "document", json_error_reason(chunk.data, exc), chunk.data))
        return
    # A list of envelopes (some tools dump an array of export requests) is accepted element by element.
    docs = list(enumerate(doc)) if type(doc) is list else [(None, doc)]
    for index, item in docs:
        where = "document" if index is None else f"document[{index}]"
        try:
            otlp_json.decode_request(item, chunk.source, where, spans, quarantined)
        except DecodeError as exc:
            quarantined.append(Quarantined(chunk.source, where, str(exc), orjson.dumps(item)))


def _decode_proto(chunk: RawChunk, spans: list[SpanRecord], quarantined: list[Quarantined]) -> None:
    try:
        otlp_proto.decode_request(chunk.data, chunk.source, "message", spans, quarantined)
    except DecodeError as exc:
        quarantined.append(Quarantined(chunk.source, "message", str(exc), chunk.data))


def _decode_length_prefixed(chunk: RawChunk, spans: list[SpanRecord], quarantined: list[Quarantined]) -> None:
    """Records as cut by the framer: 4-byte big-endian length, then the record (zstd-compressed if legacy)."""
    data, pos, number = chunk.data, 0, chunk.first
    compressed = chunk.fmt == "proto_lp_zstd"
    while pos + 4 <= len(data):
        end = pos + 4 + int.from_bytes(data[pos : pos + 4], "big")
        record, where, pos = data[pos + 4 : end], f"record {number}", end
        number += 1
        try:
            if compressed:
                record = _unzstd(record)
            _decode_record(record, chunk.source, where, spans, quarantined)
        except DecodeError as exc:
            quarantined.append(Quarantined(chunk.source, where, str(exc), record[:MAX_DECOMPRESSED_BYTES]))


def _decode_record(
    record: bytes, source: str, where: str, spans: list[SpanRecord], quarantined: list[Quarantined]
) -> None:
    """One length-prefixed record: JSON (legacy json+zstd mode) or a serialized request."""
    if record.lstrip(WHITESPACE)[:1] == b"{":
        try:
            doc = orjson.loads(record)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(json_error_reason(record, exc)) from None
        otlp_json.decode_request(doc, source, where, spans, quarantined)
    else:
        otlp_proto.decode_request(record, source, where, spans, quarantined)


def _unzstd(record: bytes, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress one zstd frame, refusing (without allocating) output above ``limit``."""
    try:
        declared = zstandard.frame_content_size(record)
        if declared > limit:
            raise DecodeError(f"zstd record declares {declared} bytes, over the {limit}-byte limit")
        return zstandard.ZstdDecompressor().decompress(record, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"invalid zstd record ({len(record)} bytes): {exc}") from None


_DECODERS: dict[str, Callable[[RawChunk, list[SpanRecord], list[Quarantined]], None]] = {
    "jsonl": _decode_jsonl,
    "json": _decode_document,
    "proto": _decode_proto,
    "proto_lp": _decode_length_prefixed,
    "proto_lp_zstd": _decode_length_prefixed,
}


def decode_bytes(data: bytes, source: str, content_type: str, content_encoding: str | None = None) -> DecodeResult:
    """Decode an OTLP/HTTP ``/v1/traces`` body; raises :class:`DecodeError` when the body as a whole is unusable."""
    body = undo_content_encoding(data, content_encoding)
    media = content_type.split(";", 1)[0].strip().lower()
    result = DecodeResult()
    if media == "application/json":
        if not body.strip():
            return result  # an empty export request is still a success
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(json_error_reason(body, exc)) from None
        otlp_json.decode_request(doc, source, "request", result.spans, result.quarantined)
    elif media in ("application/x-protobuf", "application/protobuf"):
        otlp_proto.decode_request(body, source, "request", result.spans, result.quarantined)
    else:
        raise DecodeError(f"unsupported content type {content_type!r}: use application/json or application/x-protobuf")
    return result


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


def undo_content_encoding(data: bytes, encoding: str | None, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate zlib-wrapped or raw, zstd) with at most ``limit`` output bytes, so a
    decompression bomb stops at the limit (:class:`BodyTooLarge`)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return data
    try:
        if encoding == "zstd":  # the Inflater checks the frame ended (zstd's stream reader does not)
            body = inflate_bytes(data, "zstd", limit)
        elif encoding == "deflate":
            try:  # RFC 9110 deflate is zlib-wrapped; some clients send the raw stream
                body = _inflate(data, 15, limit, encoding)
            except zlib.error:
                body = _inflate(data, -15, limit, encoding)
        elif encoding in ("gzip", "x-gzip"):
            body = _inflate(data, 47, limit, encoding)  # 47: gzip or zlib header, detected
        else:
            raise DecodeError(f"unsupported content encoding {encoding!r}: use gzip, deflate or zstd")
    except (zlib.error, zstandard.ZstdError) as exc:
        raise DecodeError(f"invalid {encoding} body: {exc}") from None
    if len(body) > limit:
        raise BodyTooLarge(f"decompressed body exceeds {limit} bytes")
    return body
