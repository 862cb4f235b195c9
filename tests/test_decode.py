"""decode: every wire format and framing, built from real SDK spans, plus bad input that must be quarantined.

Inputs come from ``opentelemetry-sdk`` spans (seeded ids, fixed times) encoded with the real OTLP protobuf
encoder (``encode_spans``) and ``json_format.MessageToJson`` (base64 ids, enum names, camel or snake keys),
and from hand-written canonical OTLP JSON (tests/fixtures/decode/canonical.jsonl: hex ids, string ints,
every AnyValue form, the legacy envelope). Every encoding must decode to the same SpanRecords.
The golden file pins the full decode of the canonical fixture; regenerate it with
``SPANPRISM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_decode.py`` and review the diff.
"""

from __future__ import annotations

import base64
import gzip
import io
import os
import pickle
import random
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from google.protobuf.json_format import MessageToDict, MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from support.spans import T0, SeededIds, good_span, otlp_line

from spanprism.ingest.decode import (
    SUPPORTED_FORMATS,
    DecodeError,
    RejectedChunk,
    decode_bytes,
    decode_chunk,
    iter_chunks,
    open_input,
    sniff,
)
from spanprism.ingest.records import DecodeResult, RawChunk

HERE = Path(__file__).resolve().parent
CANONICAL = HERE / "fixtures" / "decode" / "canonical.jsonl"
GOLDEN = HERE / "golden" / "decode" / "canonical.json"


@pytest.fixture(scope="module")
def sdk_spans() -> tuple[ReadableSpan, ...]:
    """Three spans, two scopes: every SDK attribute type, an event, a child with ERROR status, an OK span."""
    exporter = InMemorySpanExporter()
    resource = Resource.create({"service.name": "decode-test", "deployment.environment.name": "ci"})
    provider = TracerProvider(resource=resource, id_generator=SeededIds(42))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    llm = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0")
    http = provider.get_tracer("opentelemetry.instrumentation.httpx")
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.request.stream": True,
        "gen_ai.request.temperature": 0.7,
        "gen_ai.response.finish_reasons": ("stop", "length"),
        "token.ids": (1, 2, -3),
        "scores": (0.5, 1.25),
        "flags": (True, False),
    }
    root = llm.start_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes=attrs, start_time=T0)
    root.add_event("gen_ai.content.completion.chunk", {"index": 0, "text": "Hel"}, timestamp=T0 + 400_000_000)
    child = http.start_span("POST", context=set_span_in_context(root), kind=SpanKind.CLIENT, start_time=T0 + 10)
    child.set_status(Status(StatusCode.ERROR, "rate limited"))
    child.end(end_time=T0 + 900_000_000)
    root.end(end_time=T0 + 1_250_000_000)
    other = llm.start_span("embeddings", kind=SpanKind.SERVER, start_time=T0 + 5)
    other.set_status(Status(StatusCode.OK))
    other.end(end_time=T0 + 6)
    provider.shutdown()
    return exporter.get_finished_spans()


def expected(spans: tuple[ReadableSpan, ...]) -> list[dict[str, Any]]:
    """What decode must produce, derived from the SDK objects themselves (not from any encoding)."""

    def plain(attrs: Any) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(attrs).items()}

    return sorted(
        (
            {
                "trace_id": f"{s.context.trace_id:032x}",
                "span_id": f"{s.context.span_id:016x}",
                "parent_span_id": f"{s.parent.span_id:016x}" if s.parent else None,
                "name": s.name,
                "kind": s.kind.value + 1,  # the SDK enum starts at INTERNAL=0, OTLP at UNSPECIFIED=0
                "start_ns": s.start_time,
                "end_ns": s.end_time,
                "attributes": plain(s.attributes),
                "resource": plain(s.resource.attributes),
                "scope": s.instrumentation_scope.name,
                "events": [
                    {"name": e.name, "time_ns": e.timestamp, "attributes": plain(e.attributes)} for e in s.events
                ],
                "status_code": s.status.status_code.value,
                "status_message": s.status.description or "",
            }
            for s in spans
        ),
        key=lambda r: r["span_id"],
    )


def comparable(result: DecodeResult) -> list[dict[str, Any]]:
    assert not result.quarantined, result.quarantined
    keep = ("source", "location", "raw")
    return sorted(({k: v for k, v in s.items() if k not in keep} for s in result.spans), key=lambda r: r["span_id"])


def decode_all(data: bytes | Any, source: str = "test", **options: int) -> tuple[list[RawChunk], DecodeResult]:
    """open_input → iter_chunks → decode_chunk, with each chunk pickled as it would be for a worker process."""
    stream = open_input(io.BytesIO(data) if isinstance(data, bytes) else data)
    chunks = list(iter_chunks(stream, source, **options))
    total = DecodeResult()
    for chunk in chunks:
        result = decode_chunk(pickle.loads(pickle.dumps(chunk)))
        total.spans += result.spans
        total.quarantined += result.quarantined
    return chunks, total


def length_prefixed(records: list[bytes]) -> bytes:
    return b"".join(len(r).to_bytes(4, "big") + r for r in records)


def canonical_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """Spec-style OTLP JSON: hex ids (upper-case, to test case folding), enums as integers, ints as strings."""

    def fix(node: Any) -> Any:
        if isinstance(node, list):
            return [fix(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {k: fix(v) for k, v in node.items()}
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in out:
                out[key] = base64.b64decode(out[key]).hex().upper()
        if isinstance(out.get("kind"), str):
            out["kind"] = ["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"].index(
                out["kind"]
            )
        if isinstance(out.get("code"), str):
            out["code"] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"].index(out["code"])
        return out

    return fix(MessageToDict(request))


@pytest.fixture(scope="module")
def request_pb(sdk_spans: tuple[ReadableSpan, ...]) -> ExportTraceServiceRequest:
    return encode_spans(sdk_spans)


def encodings(request: ExportTraceServiceRequest) -> dict[str, tuple[bytes, str]]:
    """Every file shape a Collector, an SDK dump or a generic marshaller produces, with its expected format."""
    proto = request.SerializeToString()
    camel = MessageToJson(request, indent=None).encode()
    snake = MessageToJson(request, indent=None, preserving_proto_field_name=True).encode()
    hexed = orjson.dumps(canonical_json(request))
    zstd = zstandard.ZstdCompressor()
    return {
        "jsonl_camel_base64": (camel + b"\n", "jsonl"),
        "jsonl_snake_base64": (snake + b"\n", "jsonl"),
        "jsonl_canonical_hex": (hexed + b"\n", "jsonl"),
        "json_pretty_document": (MessageToJson(request, indent=2).encode(), "json"),
        "json_list_of_documents": (orjson.dumps([orjson.loads(hexed)], option=orjson.OPT_INDENT_2), "json"),
        "proto_single": (proto, "proto"),
        "proto_length_prefixed": (length_prefixed([proto]), "proto_lp"),
        "legacy_zstd_records_proto": (length_prefixed([zstd.compress(proto)]), "proto_lp_zstd"),
        "legacy_zstd_records_json": (length_prefixed([zstd.compress(camel)]), "proto_lp_zstd"),
        "gzip_jsonl": (gzip.compress(hexed + b"\n"), "jsonl"),
        "native_zstd_proto_lp": (zstd.compress(length_prefixed([proto])), "proto_lp"),
        "native_zstd_jsonl_two_frames": (zstd.compress(b"\n") + zstd.compress(camel + b"\n"), "jsonl"),
    }


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


def test_canonical_fixture_matches_golden() -> None:
    _, result = decode_all(CANONICAL.read_bytes(), source="canonical.jsonl")
    assert not result.quarantined
    got = [jsonable({**s, "raw": orjson.loads(s["raw"]())}) for s in result.spans]
    if os.environ.get("SPANPRISM_UPDATE_GOLDEN") == "1":
        GOLDEN.write_bytes(orjson.dumps(got, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    assert got == orjson.loads(GOLDEN.read_bytes())


def jsonable(value: Any) -> Any:
    """bytes and non-finite floats made JSON-safe and explicit, so the golden file pins them too."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return {"$float": repr(value)}
    return value


def test_canonical_fixture_hand_checked_values() -> None:
    _, result = decode_all(CANONICAL.read_bytes())
    by_name = {s["name"]: s for s in result.spans}
    chat, legacy, snake = by_name["chat gpt-4o-mini"], by_name["legacy span"], by_name["snake span"]
    assert (chat["trace_id"], chat["parent_span_id"], chat["kind"]) == ("5b8efff798038103d269b633813fc60c", None, 3)
    assert chat["attributes"]["gen_ai.usage.raw"] == {
        "prompt_tokens": 1200,
        "details": {"cached_tokens": 1024},
        "missing": None,
    }
    assert chat["attributes"]["gen_ai.response.finish_reasons"] == ["stop", 2, []]
    assert chat["attributes"]["payload.bytes"] == b"hello"
    assert chat["attributes"]["empty.value"] is None and chat["attributes"]["gen_ai.request.top_p"] == 1.0
    assert by_name["POST /v1/chat/completions"]["parent_span_id"] == "eee19b7ec3c1b174"
    assert (legacy["scope"], legacy["kind"], legacy["status_code"]) == ("old.library", 2, 1)
    assert legacy["attributes"]["ratio.inf"] == float("inf") and legacy["attributes"]["count.negative"] == -42
    assert (snake["trace_id"], snake["span_id"], snake["parent_span_id"]) == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
        "00f067aa0ba902b7",
    )
    assert (snake["kind"], snake["status_code"], snake["status_message"]) == (3, 2, "boom")
    assert snake["events"] == [{"name": "First Token Stream Event", "time_ns": 1700000000100000000, "attributes": {}}]


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


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"intValue": "12.5"}, "intValue '12.5' is not an integer"),
        ({"doubleValue": "fast"}, "doubleValue 'fast' is not a number"),
        ({"stringValue": 5}, "stringValue 5 is not a str"),
        ({"boolValue": "yes"}, "boolValue 'yes' is not a bool"),
        ({"bytesValue": "!!"}, "bytesValue '!!' is not base64"),
        ({"arrayValue": [1]}, "arrayValue must be an object with a 'values' list"),
        ({"kvlistValue": {"values": [{"value": {}}]}}, "is not a {key, value} object with a string key"),
        ("plain", "attribute value 'plain' is not an AnyValue object"),
    ],
)
def test_bad_attribute_values_quarantine_their_span(value: Any, reason: str) -> None:
    attrs = [{"key": "ok", "value": {"stringValue": "x"}}, {"key": "bad", "value": value}]
    _, result = decode_all(otlp_line(good_span(1, attributes=attrs), good_span(2)))
    assert [s["span_id"] for s in result.spans] == ["0000000000000002"]
    [bad] = result.quarantined
    assert bad.location == "line 1 span 1" and bad.reason.startswith("attributes 'bad': ") and reason in bad.reason


def test_ten_megabyte_attribute_decodes(tmp_path: Path) -> None:
    big = "x" * 10_000_000
    path = tmp_path / "big.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                otlp_line(good_span(1)),
                otlp_line(good_span(2, attributes=[{"key": "gen_ai.input.messages", "value": {"stringValue": big}}])),
                otlp_line(good_span(3)),
            ]
        )
        + b"\n"
    )
    chunks, result = decode_all(open_input(path), chunk_bytes=1 << 20)
    assert len(chunks) == 3 and not result.quarantined
    assert [s["location"] for s in result.spans] == ["line 1 span 1", "line 2 span 1", "line 3 span 1"]
    assert result.spans[1]["attributes"]["gen_ai.input.messages"] == big


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
