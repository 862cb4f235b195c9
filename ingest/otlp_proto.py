"""OTLP protobuf (a serialized ``ExportTraceServiceRequest``) → :class:`SpanRecord`.

Walks the generated message objects directly (much faster than ``MessageToDict``, and it keeps int64
and bytes exact). Legacy payloads from proto < 0.19 carry ``instrumentation_library_spans`` in field
1000 of ResourceSpans, which today's schema reserves and therefore parses as an unknown field; its wire
layout is identical to ScopeSpans (scope name = field 1 of field 1), so it is re-parsed as ScopeSpans
instead of silently dropping those spans.

Two implementations of :func:`decode_request` give the same spans, quarantine entries and errors: the native
decoder (``_otlp_native``, a C extension built by ``make install``; it parses the wire format directly, ~10x
faster) when it is importable, else the walk over the protobuf runtime's message objects below, which stays the
reference (``tests/test_otlp_native.py`` compares the two on every fixture and on thousands of corrupted bodies).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError as ProtoDecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from spanprism.ingest.otlp_json_values import DecodeError, SpanError
from spanprism.ingest.records import Quarantined, SpanEvent, SpanRecord

try:  # the optional C extension (setup.py); absent on a build without a compiler: the Python walk is used
    from spanprism.ingest import _otlp_native
except ImportError:  # pragma: no cover - exercised where the extension is not built
    _otlp_native = None  # type: ignore[assignment]

__all__ = ["NATIVE", "decode_request", "decode_request_native", "decode_request_python"]

#: True when the native decoder is in use.
NATIVE = _otlp_native is not None

_LEGACY_SCOPE_SPANS_FIELD = 1000
_ZERO_TRACE, _ZERO_SPAN = bytes(16), bytes(8)


def _any(value: AnyValue) -> Any:
    """One AnyValue message → Python value (unset oneof → None)."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bool_value":
        return value.bool_value
    if which == "array_value":
        return [_any(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value
    return None  # unset, or a oneof member this decoder does not know (e.g. string_value_strindex)


def _attributes(kvs: Any) -> dict[str, Any]:
    """Repeated KeyValue → {key: python value}.

    upb accessors cost ~100-200 ns each, so the dominant case is tested with one access: a non-empty
    ``string_value`` can only mean the oneof holds a string; anything else asks ``WhichOneof``.
    """
    out: dict[str, Any] = {}
    for kv in kvs:
        value = kv.value
        text = value.string_value
        out[kv.key] = text if text else _any(value)
    return out


def _id(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size:
        raise SpanError(f"{what} is {len(raw)} bytes, expected {size}" if raw else f"{what} is missing")
    if raw == (_ZERO_TRACE if size == 16 else _ZERO_SPAN):
        raise SpanError(f"{what} is all zeros")
    return raw.hex()


def _events(span: Span) -> list[SpanEvent]:
    return [
        {"name": event.name, "time_ns": event.time_unix_nano, "attributes": _attributes(event.attributes)}
        for event in span.events
    ]


def decode_span(span: Span, resource: dict[str, Any], scope: str, source: str, location: str) -> SpanRecord:
    """One Span message → SpanRecord (raises SpanError for missing or malformed ids)."""
    parent = span.parent_span_id
    return {
        "trace_id": _id(span.trace_id, 16, "trace_id"),
        "span_id": _id(span.span_id, 8, "span_id"),
        "parent_span_id": None if not parent or parent == _ZERO_SPAN else _id(parent, 8, "parent_span_id"),
        "name": span.name,
        "kind": span.kind,
        "start_ns": span.start_time_unix_nano,
        "end_ns": span.end_time_unix_nano,
        "attributes": _attributes(span.attributes),
        "resource": resource,
        "scope": scope,
        "events": _events(span),
        "status_code": span.status.code,
        "status_message": span.status.message,
        "source": source,
        "location": location,
        "raw": span.SerializeToString,
    }


def _scope_spans(resource_spans: ResourceSpans) -> list[Any]:
    """ScopeSpans, plus legacy InstrumentationLibrarySpans (field 1000) re-parsed as ScopeSpans."""
    if resource_spans.scope_spans:
        return list(resource_spans.scope_spans)
    legacy: list[Any] = []
    for field in UnknownFieldSet(resource_spans):
        if field.field_number == _LEGACY_SCOPE_SPANS_FIELD and isinstance(field.data, bytes):
            legacy.append(ScopeSpans.FromString(field.data))
    return legacy


def parse_request(data: bytes) -> ExportTraceServiceRequest:
    """Parse a serialized ExportTraceServiceRequest or raise DecodeError with the parser's reason."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(data)
    except (ProtoDecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"invalid protobuf ExportTraceServiceRequest ({len(data)} bytes): {exc}") from None
    return request


def _bad_legacy(source: str, where: str, reason: str, resource_spans: bytes) -> Quarantined:
    """The quarantine entry of a ResourceSpans whose legacy field 1000 is no valid ScopeSpans (both decoders)."""
    return Quarantined(source, f"{where} legacy instrumentation_library_spans",
                       f"invalid legacy InstrumentationLibrarySpans: {reason}", resource_spans)  # fmt: skip


def decode_request_python(
    data: bytes, source: str, where: str, spans: list[SpanRecord], quarantined: list[Quarantined]
) -> None:
    """Append the spans of one serialized request; bad spans are quarantined as ``"{where} span {n}"``."""
    request = parse_request(data)
    count = 0
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        try:
            scope_list = _scope_spans(resource_spans)
        except (ProtoDecodeError, RuntimeError, ValueError) as exc:
            quarantined.append(_bad_legacy(source, where, str(exc), resource_spans.SerializeToString()))
            continue
        for scope_spans in scope_list:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                count += 1
                location = f"{where} span {count}"
                try:
                    spans.append(decode_span(span, resource, scope, source, location))
                except SpanError as exc:
                    quarantined.append(Quarantined(source, location, str(exc), span.SerializeToString()))


def _span_bytes(data: bytes, start: int, end: int) -> bytes:
    """One span's bytes as the protobuf runtime re-serializes it (what the Python walk quarantines)."""
    return Span.FromString(data[start:end]).SerializeToString()


def decode_request_native(
    data: bytes, source: str, where: str, spans: list[SpanRecord], quarantined: list[Quarantined]
) -> None:
    """:func:`decode_request_python` done by the C extension: the same spans, quarantine entries and errors.

    The extension reports bad items by byte range; their quarantine bytes and the legacy parser's reason come
    from the protobuf runtime here (the bad path only), so they are exactly the Python walk's.
    """
    if _otlp_native is None:
        raise RuntimeError("the native OTLP decoder (spanprism.ingest._otlp_native) is not built")
    try:
        decoded, bad = _otlp_native.decode(bytes(data), source, where)
    except _otlp_native.Error:
        # Rejected (the bad path only): the protobuf runtime says why in its own words (upb may name another of
        # several problems first: it reads a string up to 16 bytes past its message's end before noticing), and
        # should it accept what the extension refused, its decision stands (tests assert the two agree).
        decode_request_python(data, source, where, spans, quarantined)
        return
    spans.extend(decoded)
    for item in bad:
        if item[0] == "span":
            _, location, reason, start, end = item
            quarantined.append(Quarantined(source, location, reason, _span_bytes(data, start, end)))
        else:
            _, rs_start, rs_end, legacy_start, legacy_end = item
            try:
                ScopeSpans.FromString(data[legacy_start:legacy_end])
                exc_text = "invalid ScopeSpans"  # not reached: the extension found it invalid as upb does
            except (ProtoDecodeError, RuntimeError, ValueError) as exc:
                exc_text = str(exc)
            resource_spans = ResourceSpans.FromString(data[rs_start:rs_end]).SerializeToString()
            quarantined.append(_bad_legacy(source, where, exc_text, resource_spans))


if _otlp_native is not None:
    _otlp_native.set_reserializer(_span_bytes)

#: Append the spans of one serialized request (native when built, else the Python walk); see the module docstring.
decode_request = decode_request_native if NATIVE else decode_request_python
