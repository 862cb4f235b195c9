"""decode: every wire format and framing, built from real SDK spans, decodes to the same SpanRecords.

Inputs come from ``opentelemetry-sdk`` spans (seeded ids, fixed times) encoded with the real OTLP protobuf
encoder and ``json_format.MessageToJson`` (tests/support/decode_inputs.py): files of every format, HTTP bodies, a
pipe, the legacy protobuf envelope; chunking keeps whole lines and bounded memory; sniffing names each format.
Values are in test_decode_values.py, bad input in test_decode_errors.py.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf.json_format import MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan
from support.decode_inputs import comparable, decode_all, encodings, expected, make_sdk_spans
from support.spans import good_span, otlp_line

from spanprism.ingest.decode import SUPPORTED_FORMATS, decode_bytes, iter_chunks, open_input, sniff


@pytest.fixture(scope="module")
def sdk_spans() -> tuple[ReadableSpan, ...]:
    """Three spans, two scopes: every SDK attribute type, an event, a child with ERROR status, an OK span."""
    return make_sdk_spans()


@pytest.fixture(scope="module")
def request_pb(sdk_spans: tuple[ReadableSpan, ...]) -> ExportTraceServiceRequest:
    return encode_spans(sdk_spans)


@pytest.mark.parametrize("name", sorted(encodings(ExportTraceServiceRequest())))
def test_every_encoding_decodes_to_the_sdk_spans(name: str, sdk_spans, request_pb, tmp_path: Path) -> None:
    data, fmt = encodings(request_pb)[name]
    path = tmp_path / name
    path.write_bytes(data)
    with open_input(str(path)) as stream:
        chunks, result = decode_all(stream, source=name)
    assert {c.fmt for c in chunks} == {fmt}
    assert comparable(result) == expected(sdk_spans)
    assert all(s["source"] == name and " span " in s["location"] for s in result.spans)


def test_encodings_are_the_supported_formats(request_pb) -> None:
    assert {fmt for _, fmt in encodings(request_pb).values()} == set(SUPPORTED_FORMATS)


def test_http_bodies_json_protobuf_and_gzip(sdk_spans, request_pb) -> None:
    proto, camel = request_pb.SerializeToString(), MessageToJson(request_pb).encode()
    for body, content_type, encoding in [
        (proto, "application/x-protobuf", None),
        (camel, "application/json; charset=utf-8", None),
        (gzip.compress(proto), "application/x-protobuf", "gzip"),
        (gzip.compress(camel), "Application/JSON", "GZIP"),
    ]:
        result = decode_bytes(body, "http", content_type, encoding)
        assert comparable(result) == expected(sdk_spans)
        assert {s["location"] for s in result.spans} == {"request span 1", "request span 2", "request span 3"}
    assert decode_bytes(b"", "http", "application/x-protobuf").spans == []
    assert decode_bytes(b"", "http", "application/json").spans == []


def test_stdin_like_pipe_with_gzip(sdk_spans, request_pb) -> None:
    data = gzip.compress(MessageToJson(request_pb, indent=None).encode() + b"\n")
    read_fd, write_fd = os.pipe()

    def feed() -> None:  # dribble the bytes like a slow producer would
        with os.fdopen(write_fd, "wb", buffering=0) as pipe:
            for start in range(0, len(data), 7):
                pipe.write(data[start : start + 7])

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_fd, "rb") as stdin:
        _, result = decode_all(stdin, source="stdin")
    writer.join()
    assert comparable(result) == expected(sdk_spans)


def test_legacy_protobuf_instrumentation_library_spans(request_pb) -> None:
    """proto < 0.19 put ScopeSpans-shaped InstrumentationLibrarySpans in ResourceSpans field 1000."""

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    rs = request_pb.resource_spans[0]
    legacy_rs = field(1, rs.resource.SerializeToString()) + b"".join(
        field(1000, s.SerializeToString()) for s in rs.scope_spans
    )
    result = decode_bytes(field(1, legacy_rs), "legacy", "application/x-protobuf")
    assert not result.quarantined and len(result.spans) == 3
    assert {s["scope"] for s in result.spans} == {s.scope.name for s in rs.scope_spans}
    assert Span.FromString(result.spans[0]["raw"]()).name == result.spans[0]["name"]


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def test_chunks_hold_whole_lines_with_right_numbers_and_offsets() -> None:
    rng = random.Random(7)
    lines = [otlp_line(*[good_span(n * 10 + k) for k in range(rng.randint(1, 3))]) for n in range(1, 400)]
    lines.insert(50, b"")  # a blank line still counts
    data = b"\n".join(lines)  # no trailing newline
    chunks, result = decode_all(b"\xef\xbb\xbf" + data, chunk_bytes=8192)  # with a UTF-8 BOM
    assert len(chunks) > 10 and all(0 < len(c.data) <= 8192 for c in chunks)
    for chunk in chunks:
        assert data[chunk.offset - 3 : chunk.offset - 3 + len(chunk.data)] == chunk.data
        assert chunk.first == 1 + data[: chunk.offset - 3].count(b"\n")
    for span in result.spans:
        line = int(span["location"].split()[1])
        assert int(span["span_id"], 16) // 10 == (line if line <= 50 else line - 1)
    assert not result.quarantined and len(result.spans) == sum(
        len(orjson.loads(x)["resourceSpans"][0]["scopeSpans"][0]["spans"]) for x in lines if x
    )


class Generated(io.RawIOBase):
    """A stream of ``total`` bytes repeating ``pattern``, made on the fly so the test itself holds no big file."""

    def __init__(self, pattern: bytes, total: int) -> None:
        self.block, self.pos, self.left = pattern * max(1, (256 << 10) // len(pattern)), 0, total

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        piece = self.block[self.pos : self.pos + min(len(target), self.left)]
        target[: len(piece)] = piece
        self.pos, self.left = (self.pos + len(piece)) % len(self.block), self.left - len(piece)
        return len(piece)


@pytest.mark.parametrize("pattern", [otlp_line(good_span(1)) + b"\n", b'{"resourceSpans": ["' + b"x" * 4096])
def test_memory_stays_bounded_by_chunk_size(pattern: bytes) -> None:
    """48 MB of JSON lines, or one 48 MB line over max_record_bytes: peak memory stays a few chunks."""
    tracemalloc.start()
    try:
        count = 0
        for chunk in iter_chunks(
            open_input(Generated(pattern, 48 << 20)), "gen", chunk_bytes=1 << 20, max_record_bytes=2 << 20
        ):
            count += 1
            del chunk
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count >= (40 if pattern.endswith(b"\n") else 1)
    assert peak < 8 << 20, peak


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b'{"resourceSpans":[]}\n{"resourceSpans":[]}', "jsonl"),
        (b'\n  {"resourceSpans":[]}', "jsonl"),
        (b'{"resourceSpans": [\n  {"resource": {}}\n]}', "json"),
        (b'{\n  "resourceSpans": []\n}', "json"),
        (b'[\n{"resourceSpans": []}\n]', "json"),
        (b'{"resourceSpans": [BROKEN\n{"resourceSpans": []}', "jsonl"),
        (b"\x0a\x12\x0a\x10", "proto"),
        (b"\x00\x00\x00\x05\x0a\x03abc", "proto_lp"),
        (b"\x00\x00\x00\x00", "proto_lp"),
        (b"\x00\x00\x01\x00\x28\xb5\x2f\xfd", "proto_lp_zstd"),
        (b"hello world", None),
        (b"", None),
    ],
)
def test_sniff(head: bytes, fmt: str | None) -> None:
    assert sniff(head) == fmt
