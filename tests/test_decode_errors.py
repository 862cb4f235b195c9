"""decode: bad input — a body undecodable as a whole raises; bad lines, spans, records and framing are quarantined
precisely (location, reason, raw bytes) and the rest lands; oversize records and unrecognized input are quarantined.
"""

from __future__ import annotations

import gzip

import orjson
import pytest
import zstandard
from google.protobuf.json_format import MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support.decode_inputs import canonical_json, decode_all, length_prefixed, make_sdk_spans
from support.spans import good_span, otlp_line

from spanprism.ingest.decode import DecodeError, RejectedChunk, decode_bytes, decode_chunk
from spanprism.ingest.records import RawChunk


@pytest.fixture(scope="module")
def request_pb() -> ExportTraceServiceRequest:
    """The SDK spans of :func:`support.decode_inputs.make_sdk_spans` as one export request."""
    return encode_spans(make_sdk_spans())


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "reason"),
    [
        (b'{"resourceSpans": [', "application/json", None, "truncated JSON"),
        (b'{"name": "console span"}', "application/json", None, "not an OTLP envelope"),
        (b'[{"resourceSpans": []}]', "application/json", None, "not an OTLP envelope"),
        (b'{"resourceSpans": {"a": 1}}', "application/json", None, "resourceSpans is an object, expected a list"),
        (b"\x0a\xff\xff\xff\x0f", "application/x-protobuf", None, "invalid protobuf"),
        (b"{}", "text/plain", None, "unsupported content type"),
        (gzip.compress(b"{}", mtime=0)[:10] + b"\xff" * 12, "application/json", "gzip", "invalid gzip body"),
        (gzip.compress(b"{}", mtime=0)[:15], "application/json", "gzip", "truncated gzip body"),
        (b"{}", "application/json", "br", "unsupported content encoding"),
    ],
)
def test_http_body_undecodable_as_a_whole_raises(
    body: bytes, content_type: str, encoding: str | None, reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_bytes(body, "http", content_type, encoding)


def test_http_partial_problems_are_quarantined(request_pb) -> None:
    doc = canonical_json(request_pb)
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "xyz"
    result = decode_bytes(orjson.dumps(doc), "http", "application/json")
    assert len(result.spans) == 2
    [bad] = result.quarantined
    assert (bad.location, bad.reason) == ("request span 1", "spanId 'xyz' is not 8 bytes of hex or base64")
    assert orjson.loads(bad.raw)["spanId"] == "xyz"


def test_bad_lines_and_spans_are_quarantined_precisely_and_the_rest_lands() -> None:
    lines = [
        otlp_line(good_span(1)),
        b'{"resourceSpans": [}',
        b'\xff\xfe{"resourceSpans": []}',
        otlp_line(good_span(4), good_span(5, attributes={"a": 1}), good_span(6, startTimeUnixNano="abc")),
        otlp_line(scope_spans=[{"scope": {"name": "s"}, "spans": "nope"}, {"spans": [good_span(7)]}]),
        b'{"name": "console", "context": {"trace_id": "0x5b8e"}}',
        b"[1, 2]",
        otlp_line(good_span(8, traceId=None), good_span(9, spanId="0" * 16), good_span(10, traceId="zz" * 16)),
        otlp_line(good_span(11, events=[{"timeUnixNano": 1.5}]), good_span(12, status="ok"), good_span(13)),
        otlp_line(good_span(14))[:-40],  # truncated last line, no newline
    ]
    chunks, result = decode_all(b"\n".join(lines))
    assert [c.fmt for c in chunks] == ["jsonl"]
    assert sorted(int(s["span_id"], 16) for s in result.spans) == [1, 4, 7, 13]
    assert {s["span_id"]: s["location"] for s in result.spans}["0000000000000007"] == "line 5 span 1"
    got = {q.location: q.reason for q in result.quarantined}
    # orjson's own wording may change between releases; the position it reports must not.
    line_2 = got.pop("line 2")
    assert line_2.startswith("invalid JSON: unexpected character") and line_2.endswith("(char 19)")
    assert got == {
        "line 3": "invalid UTF-8 at byte 0: b'\\xff\\xfe{\"'",
        "line 4 span 2": "attributes is an object, expected a list",
        "line 4 span 3": "startTimeUnixNano 'abc' is not an integer",
        "line 5 resourceSpans[0].scopeSpans[0]": "spans is a string, expected a list",
        "line 6": "not an OTLP envelope: no resourceSpans (keys: ['context', 'name'])",
        "line 7": "not an OTLP envelope: the JSON document is a list, expected an object",
        "line 8 span 1": "traceId is missing",
        "line 8 span 2": "spanId is all zeros",
        "line 8 span 3": "traceId 'zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz' is not 16 bytes of hex or base64",
        "line 9 span 1": "event timeUnixNano 1.5 is not an integer",
        "line 9 span 2": "status is a string, expected an object",
        "line 10": f"truncated JSON: input ends inside a value after {len(lines[-1])} bytes",
    }
    raws = {q.location: q.raw for q in result.quarantined}
    assert raws["line 2"] == lines[1] and raws["line 10"] == lines[-1]
    assert orjson.loads(raws["line 4 span 3"])["startTimeUnixNano"] == "abc"
    assert orjson.loads(raws["line 5 resourceSpans[0].scopeSpans[0]"])["spans"] == "nope"


def test_oversize_records_are_quarantined_with_size_and_limit(request_pb) -> None:
    huge = otlp_line(good_span(2, name="n" * 200_000))
    data = b"\n".join([otlp_line(good_span(1)), huge, otlp_line(good_span(3))]) + b"\n"
    _, result = decode_all(data, max_record_bytes=65_536, chunk_bytes=4096)
    assert [s["location"] for s in result.spans] == ["line 1 span 1", "line 3 span 1"]
    [bad] = result.quarantined
    assert (bad.location, bad.reason) == ("line 2", f"line of {len(huge)} bytes exceeds max_record_bytes (65536)")
    assert huge.startswith(bad.raw) and 0 < len(bad.raw) <= 65_536
    proto = request_pb.SerializeToString()
    records = length_prefixed([proto, b"\x0a" + bytes(100_000), proto])
    _, result = decode_all(records, max_record_bytes=50_000)
    assert len(result.spans) == 6
    assert [(q.location, q.reason) for q in result.quarantined] == [
        ("record 2", "record of 100001 bytes exceeds max_record_bytes (50000)")
    ]
    _, result = decode_all(MessageToJson(request_pb).encode(), max_record_bytes=1000)
    assert [q.location for q in result.quarantined] == [
        "document"
    ] and "exceeds max_record_bytes" in result.quarantined[0].reason


def test_broken_framing_and_records(request_pb) -> None:
    proto = request_pb.SerializeToString()
    zstd = zstandard.ZstdCompressor()
    cases = {
        length_prefixed([proto, proto])[:-10]: ("record 2", "truncated record: the length prefix announces"),
        length_prefixed([proto]) + b"\x00\x00": ("record 2", "truncated length prefix: 2 trailing bytes"),
        length_prefixed([proto, b"\x0a\x05\xff"]): ("record 2", "invalid protobuf ExportTraceServiceRequest"),
        length_prefixed([zstd.compress(proto), b"\x28\xb5\x2f\xfd junk"]): ("record 2", "invalid zstd record"),
        length_prefixed([zstd.compress(proto), zstd.compress(b'{"resourceSpans": 1}')]): (
            "record 2",
            "resourceSpans is an integer, expected a list",
        ),
    }
    for data, (location, reason) in cases.items():
        _, result = decode_all(data)
        assert len(result.spans) == 3
        [bad] = result.quarantined
        assert bad.location == location and bad.reason.startswith(reason), bad


def test_empty_blank_and_unrecognized_inputs() -> None:
    assert decode_all(b"")[0] == [] and decode_all(b"  \n\n")[0] == []
    assert decode_all(gzip.compress(b""))[0] == []
    chunks, result = decode_all(b"name,start,end\nchat,1,2\n")
    assert [type(c) for c in chunks] == [RejectedChunk]
    [bad] = result.quarantined
    assert bad.location == "byte 0" and bad.reason.startswith("unrecognized input") and bad.raw.startswith(b"name")
    assert decode_chunk(RawChunk("x", "csv", b"a,b")).quarantined[0].reason == "unknown chunk format 'csv'"
