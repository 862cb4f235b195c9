"""OTLP JSON lines of captured multi-span calls, for the span-merging tests."""

from __future__ import annotations

import base64
from typing import Any

import orjson


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [_value(x) for x in v]}}
    if isinstance(v, bytes):
        return {"bytesValue": base64.b64encode(v).decode()}
    return {"stringValue": str(v)}


def _attrs(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in d.items()]


def _event(e: dict[str, Any]) -> dict[str, Any]:
    return {"name": e["name"], "timeUnixNano": str(e["time_ns"]), "attributes": _attrs(e["attributes"])}


def resource_spans(span: dict[str, Any]) -> dict[str, Any]:
    """One SpanRecord-shaped dict as one OTLP JSON ``ResourceSpans`` (its resource, scope and the span)."""
    body = {
        "traceId": span["trace_id"],
        "spanId": span["span_id"],
        "name": span["name"],
        "kind": span["kind"],
        "startTimeUnixNano": str(span["start_ns"]),
        "endTimeUnixNano": str(span["end_ns"]),
        "attributes": _attrs(span["attributes"]),
        "events": [_event(e) for e in span["events"]],
        "status": {"code": span["status_code"]},
    }
    if span["parent_span_id"]:
        body["parentSpanId"] = span["parent_span_id"]
    return {"resource": {"attributes": _attrs(span["resource"])},
            "scopeSpans": [{"scope": {"name": span["scope"]}, "spans": [body]}]}  # fmt: skip


def otlp_line(span: dict[str, Any]) -> bytes:
    """One SpanRecord-shaped dict as one OTLP JSON export request line."""
    return orjson.dumps({"resourceSpans": [resource_spans(span)]})
