"""The native OTLP protobuf decoder (ingest/_otlp_native.c) against the Python walk (ingest/otlp_proto.py).

Differential: every protobuf input the tests know — the normalize fixtures and the decode fixture re-encoded
with the protobuf runtime, real ``opentelemetry-sdk`` encoder output, the simulator's OTLP writer in every
convention (with and without message contents), legacy field-1000 payloads, spans with bad ids — must give the
same SpanRecords (dict order included), quarantine entries and errors from both. Then thousands of seeded
corruptions (bit flips, truncations, insertions, deletions, duplications) of those bodies: never a crash, the
same accept/reject decision and the same result.

``SPANPRISM_REQUIRE_NATIVE=1`` (set by ``.ci/run``) turns "extension not built" from a skip into a failure.
"""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from support.otlp_rows import make_row
from support.otlp_spans import genai_spans

from spanprism.attribution.simulator.otlp.writer import CONVENTIONS, iter_export_lines
from spanprism.ingest import otlp_json, otlp_proto
from spanprism.ingest.otlp_json_values import DecodeError
from spanprism.ingest.records import Quarantined, SpanRecord

HERE = Path(__file__).resolve().parent
_otlp_native = otlp_proto._otlp_native

if not otlp_proto.NATIVE:
    if os.environ.get("SPANPRISM_REQUIRE_NATIVE"):
        pytest.fail("SPANPRISM_REQUIRE_NATIVE is set but spanprism.ingest._otlp_native is not built", pytrace=False)
    pytest.skip("the native decoder is not built (no C compiler at install time)", allow_module_level=True)


# ------------------------------------------------------------------------------------------------- comparing


def _canon(value: Any) -> Any:
    """A comparable form: dict order kept, floats by their bits (NaN equals itself), types kept."""
    if isinstance(value, dict):
        return ("dict", [(k, _canon(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_canon(v) for v in value])
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    return (type(value).__name__, value)


def _run(decoder: Any, data: bytes) -> Any:
    spans: list[SpanRecord] = []
    quarantined: list[Quarantined] = []
    try:
        decoder(data, "src", "request", spans, quarantined)
    except DecodeError as exc:
        return ("error", str(exc))
    records = []
    for span in spans:
        record = {k: v for k, v in span.items() if k != "raw"}
        record["raw"] = span["raw"]()
        records.append(_canon(record))
    return ("ok", records, [(q.source, q.location, q.reason, q.raw) for q in quarantined])


def assert_same(data: bytes) -> Any:
    """The same result from both decoders, and the extension's own accept/reject decision is upb's."""
    python, native = _run(otlp_proto.decode_request_python, data), _run(otlp_proto.decode_request_native, data)
    assert native == python
    try:
        _otlp_native.decode(data, "src", "request")
        accepted = True
    except _otlp_native.Error:
        accepted = False
    assert accepted == (python[0] == "ok")
    return python


# --------------------------------------------------------------------------------------------- the inputs


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(_any(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(_kvs(value))
        return out
    if value is None:
        return AnyValue()
    return AnyValue(string_value=str(value))


def _kvs(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any(v)) for k, v in attrs.items()]


def _request_of(records: list[dict[str, Any]]) -> bytes:
    """Decoded span records (fixture dicts) encoded back as one protobuf request by the protobuf runtime."""
    request = ExportTraceServiceRequest()
    for record in records:
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(_kvs(record.get("resource") or {}))
        ss = rs.scope_spans.add()
        ss.scope.name = record.get("scope") or ""
        span = ss.spans.add()
        span.trace_id = bytes.fromhex(record["trace_id"])
        span.span_id = bytes.fromhex(record["span_id"])
        if record.get("parent_span_id"):
            span.parent_span_id = bytes.fromhex(record["parent_span_id"])
        span.name = record.get("name") or ""
        span.kind = int(record.get("kind") or 0)
        span.start_time_unix_nano = int(record.get("start_ns") or 0)
        span.end_time_unix_nano = int(record.get("end_ns") or 0)
        span.attributes.extend(_kvs(record.get("attributes") or {}))
        for event in record.get("events") or []:
            span.events.add(name=event["name"], time_unix_nano=int(event["time_ns"]),
                            attributes=_kvs(event.get("attributes") or {}))  # fmt: skip
        span.status.code = int(record.get("status_code") or 0)
        span.status.message = record.get("status_message") or ""
    return request.SerializeToString()


def fixture_bodies() -> dict[str, bytes]:
    """Every OTLP fixture in tests/fixtures as a protobuf request."""
    out: dict[str, bytes] = {}
    for path in sorted((HERE / "fixtures" / "normalize").glob("*.json")):
        records = [r for r in orjson.loads(path.read_bytes()) if _encodable(r)]
        out[f"normalize/{path.name}"] = _request_of(records)
    lines = (HERE / "fixtures" / "decode" / "canonical.jsonl").read_bytes().splitlines()
    for number, line in enumerate(line for line in lines if line.strip()):
        spans: list[SpanRecord] = []
        otlp_json.decode_request(orjson.loads(line), "f", "line", spans, [])
        out[f"decode/canonical.jsonl:{number}"] = _request_of([dict(s) for s in spans])
    return out


def _encodable(record: dict[str, Any]) -> bool:
    try:
        bytes.fromhex(record["trace_id"]), bytes.fromhex(record["span_id"])
        return True
    except (KeyError, TypeError, ValueError):
        return False


def sdk_bodies() -> dict[str, bytes]:
    """Real opentelemetry-sdk spans through the SDK's OTLP protobuf encoder."""
    return {"sdk/genai": encode_spans(genai_spans(12, seed=3)).SerializeToString()}


def _rows(convention: str, count: int) -> list[dict[str, Any]]:
    rng = random.Random(convention)
    return [make_row(rng, i, streaming=i % 2 == 0, error=i % 5 == 4) for i in range(count)]


def simulator_bodies() -> dict[str, bytes]:
    """The simulator's OTLP writer in every convention (JSON), re-encoded as protobuf by the protobuf runtime."""
    out: dict[str, bytes] = {}
    for convention in CONVENTIONS:
        for content in (False, True):
            lines = iter_export_lines(_rows(convention, 8), lambda _row, c=convention: c, spans_per_line=50,
                                      with_content=content, extra_non_llm=0.5, seed=11)  # fmt: skip
            for number, line in enumerate(lines):
                doc = _hex_ids_to_base64(orjson.loads(line))
                request = ParseDict(doc, ExportTraceServiceRequest())
                out[f"simulator/{convention}/content={content}/{number}"] = request.SerializeToString()
    return out


def _hex_ids_to_base64(doc: Any) -> Any:
    """OTLP/JSON carries ids as hex; the protobuf runtime's JSON parser expects base64 for bytes fields."""
    import base64

    if isinstance(doc, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode()
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
            else _hex_ids_to_base64(v)
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [_hex_ids_to_base64(v) for v in doc]
    return doc


def _field(number: int, payload: bytes) -> bytes:
    tag, out = (number << 3) | 2, bytearray()
    for value in (tag, len(payload)):
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def special_bodies() -> dict[str, bytes]:
    """Legacy field 1000, bad ids, merged singular messages, oneof switches, unknown fields."""
    good = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chat", kind=3, start_time_unix_nano=5)
    good.attributes.extend(_kvs({"gen_ai.system": "openai", "n": 3, "f": 0.5, "l": [1, "a"], "m": {"x": True}}))
    scope = ScopeSpans(spans=[good])
    scope.scope.name = "legacy.lib"
    resource = _field(1, _field(1, KeyValue(key="service.name", value=AnyValue(string_value="s")).SerializeToString()))
    bad_ids = [
        Span(span_id=b"\x02" * 8),
        Span(trace_id=b"\x01" * 15, span_id=b"\x02" * 8),
        Span(trace_id=bytes(16), span_id=b"\x02" * 8),
        Span(trace_id=b"\x01" * 16, span_id=bytes(8)),
        Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, parent_span_id=bytes(16)),
        Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, parent_span_id=bytes(8)),
        Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, parent_span_id=b"\x03" * 4),
    ]
    kv = b"".join([
        _field(1, b"k"), _field(2, _field(1, b"first")), _field(2, b"\x18\x07"),  # string then int: int wins
        _field(2, _field(5, _field(1, _field(1, b"a")))), _field(2, _field(5, _field(1, _field(1, b"b")))),
    ])  # fmt: skip
    merged = b"".join([
        _field(1, b"\x01" * 16), _field(2, b"\x02" * 8), _field(15, b"\x18\x02"), _field(15, _field(2, b"late")),
        _field(9, kv), _field(9, _field(1, b"k") + _field(2, _field(1, b"again"))), b"\xa8\x06\x01",  # unknown 101
        _field(5, b"one"), _field(5, b"two"), b"\x30\xff\xff\xff\xff\x0f",  # kind 2**32-1 → -1
    ])  # fmt: skip
    return {
        "legacy/field1000": _field(1, resource + _field(1000, scope.SerializeToString())),
        "legacy/both": _field(1, _field(2, scope.SerializeToString()) + _field(1000, b"\xff")),
        "legacy/invalid": _field(1, resource + _field(1000, scope.SerializeToString()) + _field(1000, b"\x0a\x05"))
        + _field(1, _field(2, scope.SerializeToString())),
        "bad_ids": ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[*bad_ids, good])])]
        ).SerializeToString(),
        "merged": _field(1, _field(2, _field(2, merged)) + _field(1, b"") + resource),
        "empty": b"",
    }


def all_bodies() -> dict[str, bytes]:
    return {**fixture_bodies(), **sdk_bodies(), **simulator_bodies(), **special_bodies()}


BODIES = all_bodies()


# ------------------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("name", sorted(BODIES))
def test_native_equals_python(name: str) -> None:
    result = assert_same(BODIES[name])
    if name.startswith(("sdk/", "simulator/", "normalize/")) and name != "normalize/bad.json":
        assert result[0] == "ok" and result[1], "a well-formed body decodes to spans"


def test_the_inputs_cover_every_convention_legacy_and_quarantine() -> None:
    assert {name.split("/")[1] for name in BODIES if name.startswith("simulator/")} == set(CONVENTIONS)
    legacy = assert_same(BODIES["legacy/field1000"])
    assert [dict(r[1])["scope"] for r in legacy[1]] == [("str", "legacy.lib")], "legacy spans are read as ScopeSpans"
    invalid = assert_same(BODIES["legacy/invalid"])
    assert [q[2].split(":")[0] for q in invalid[2]] == ["invalid legacy InstrumentationLibrarySpans"]
    assert len(assert_same(BODIES["bad_ids"])[2]) == 6


def _nested(depth: int) -> bytes:
    value = _field(1, b"x")
    for _ in range(depth):
        value = _field(5, _field(1, value))
    return _field(1, _field(2, _field(2, _field(9, _field(1, b"k") + _field(2, value)))))


@pytest.mark.parametrize("depth", [46, 47, 48, 49])
def test_nesting_limit_is_upbs(depth: int) -> None:
    # AnyValue → ArrayValue → AnyValue… around upb's depth limit of 100 nested messages
    assert_same(_nested(depth))
    assert_same(_field(1, _field(2, _field(2, _field(11, _field(3, _nested(depth)[7:]))))))


def _mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.choice((1, 1, 2, 3))):
        if not data:
            data = bytearray(rng.randbytes(rng.randrange(1, 8)))
            continue
        at = rng.randrange(len(data))
        op = rng.randrange(6)
        if op == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[at] = rng.choice((0x00, 0x80, 0xFF, 0x0A, 0x12, 0x7F, 0x0B, 0x0C, 0x1C, rng.randrange(256)))
        elif op == 2:
            del data[at:]
        elif op == 3:
            data[at:at] = rng.randbytes(rng.randrange(1, 6))
        elif op == 4:
            del data[at : at + rng.randrange(1, 16)]
        else:
            end = min(len(data), at + rng.randrange(1, 64))
            data[at:at] = data[at:end]
    return bytes(data)


def test_corrupted_bodies_same_decision_and_result() -> None:
    rng = random.Random(20261207)
    seeds = [body for name, body in sorted(BODIES.items()) if len(body) < 6000]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(12000):
        result = assert_same(_mutate(rng, rng.choice(seeds)))
        outcomes[result[0]] += 1
    assert min(outcomes.values()) > 1000, outcomes  # both decisions are exercised, not only one


def test_random_bytes_never_crash() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        assert_same(b"\x0a" + rng.randbytes(rng.randrange(0, 64)))


@pytest.mark.parametrize("depth", [97, 98, 99, 100, 101])
def test_unknown_group_nesting_limit_is_upbs(depth: int) -> None:
    groups = b"\x2b" * depth + b"\x2c" * depth  # field 5 start-group ×depth, then as many end-groups
    for body in (groups, _field(1, groups), _field(1, _field(2, groups))):
        assert_same(body)
