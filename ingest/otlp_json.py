"""OTLP JSON (an ``ExportTraceServiceRequest`` already parsed by orjson) → :class:`SpanRecord`.

This is the ingest hot path, so the walk is written for CPython speed: attribute values take an inline
fast path for ``stringValue`` and ``intValue`` (most GenAI attributes), everything else goes through a
small dispatch table (the values, ids and errors: :mod:`.otlp_json_values`; here the envelope, resource,
scope and span walk). Leniency rules (CONVENTIONS.md §6):

* keys: lowerCamelCase (the OTLP spec) or snake_case (generic protobuf JSON marshallers); legacy
  ``instrumentationLibrarySpans``/``instrumentationLibrary`` as well as ``scopeSpans``/``scope``;
* ids: hex in any case (→ lowercase) or base64 (24/12 chars, padding optional, URL-safe alphabet accepted);
* fixed64/int64: JSON numbers or decimal strings; doubles: numbers or "NaN"/"Infinity"/"-Infinity";
* enums (``kind``, ``status.code``): integers or their proto names; unknown fields are ignored.

Only what cannot be represented as a SpanRecord is rejected (:class:`SpanError`); semantics (end before
start, negative tokens, …) are the normalizer's business.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import lru_cache, partial
from typing import Any

import orjson

from spanprism.ingest.otlp_json_values import (
    KIND_NAMES,
    STATUS_NAMES,
    DecodeError,
    SpanError,
    attributes,
    opt_str,
    parse_enum,
    show,
    span_id,
    type_name,
    uint64,
)
from spanprism.ingest.records import Quarantined, SpanEvent, SpanRecord

__all__ = ["decode_request", "decode_span", "span_json"]


def _parent_id(value: Any) -> str | None:
    """Empty, absent or all-zero parentSpanId means a root span."""
    if value is None or value == "":
        return None
    return span_id(value, 8, "parentSpanId", zero_ok=True) or None


def _events(events: Any) -> list[SpanEvent]:
    if type(events) is not list:
        if events is None:
            return []
        raise SpanError(f"events is {type_name(events)}, expected a list")
    out: list[SpanEvent] = []
    for event in events:
        if type(event) is not dict:
            raise SpanError(f"event {show(event)} is not an object")
        when = event.get("timeUnixNano")
        name = event.get("name")
        out.append(
            {
                "name": name if type(name) is str else opt_str(name, "event name"),
                "time_ns": uint64(when if when is not None else event.get("time_unix_nano"), "event timeUnixNano"),
                "attributes": attributes(event.get("attributes"), "event attributes"),
            }
        )
    return out


def _status(status: Any) -> tuple[int, str]:
    if status is None:
        return 0, ""
    if type(status) is not dict:
        raise SpanError(f"status is {type_name(status)}, expected an object")
    code = status.get("code")
    return (
        code if type(code) is int else parse_enum(code, STATUS_NAMES, "status.code"),
        opt_str(status.get("message"), "status.message"),
    )


def _pick(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return value if value is not None else obj.get(snake)


def decode_span(
    span: Any, resource: dict[str, Any], scope: str, source: str, location: str, raw: Callable[[], bytes]
) -> SpanRecord:
    """One OTLP JSON span object → SpanRecord (raises SpanError with the reason)."""
    if type(span) is not dict:
        raise SpanError(f"span is {type_name(span)}, expected an object")
    get = span.get
    trace, ident, start, end = get("traceId"), get("spanId"), get("startTimeUnixNano"), get("endTimeUnixNano")
    if trace is None or ident is None or start is None or end is None:  # snake_case marshallers
        trace, ident = _pick(span, "traceId", "trace_id"), _pick(span, "spanId", "span_id")
        start, end = (
            _pick(span, "startTimeUnixNano", "start_time_unix_nano"),
            _pick(span, "endTimeUnixNano", "end_time_unix_nano"),
        )
    parent = get("parentSpanId")
    if parent is None:
        parent = get("parent_span_id")
    name, kind, status, events = get("name"), get("kind"), get("status"), get("events")
    # Inline the common cases (str times, no/empty status, no events); helpers handle the rest precisely.
    code, message = (0, "") if not status and (status is None or type(status) is dict) else _status(status)
    return {
        "trace_id": span_id(trace, 16, "traceId"),
        "span_id": span_id(ident, 8, "spanId"),
        "parent_span_id": _parent_id(parent) if parent else None,
        "name": name if type(name) is str else opt_str(name, "name"),
        "kind": kind if type(kind) is int else parse_enum(kind, KIND_NAMES, "kind"),
        "start_ns": int(start) if type(start) is str and start.isdecimal() else uint64(start, "startTimeUnixNano"),
        "end_ns": int(end) if type(end) is str and end.isdecimal() else uint64(end, "endTimeUnixNano"),
        "attributes": attributes(get("attributes")),
        "resource": resource,
        "scope": scope,
        "events": [] if events is None else _events(events),
        "status_code": code,
        "status_message": message,
        "source": source,
        "location": location,
        "raw": raw,
    }


def _list(container: dict[str, Any], names: tuple[str, ...], what: str) -> list[Any]:
    """The first present list among ``names`` (camel, snake, legacy); absent → []."""
    for name in names:
        value = container.get(name)
        if value is not None:
            if type(value) is not list:
                raise SpanError(f"{name} is {type_name(value)}, expected a list")
            return value
    return []


_SCOPE_LISTS = ("scopeSpans", "scope_spans", "instrumentationLibrarySpans", "instrumentation_library_spans")
_SCOPE_KEYS = ("scope", "instrumentationLibrary", "instrumentation_library")


def _resource(resource_spans: Any) -> tuple[dict[str, Any], list[Any]]:
    if type(resource_spans) is not dict:
        raise SpanError(f"resourceSpans entry is {type_name(resource_spans)}, expected an object")
    resource = resource_spans.get("resource")
    if resource is not None and type(resource) is not dict:
        raise SpanError(f"resource is {type_name(resource)}, expected an object")
    attrs = attributes(resource.get("attributes"), "resource attributes") if resource else {}
    return attrs, _list(resource_spans, _SCOPE_LISTS, "scopeSpans")


def _scope(scope_spans: Any) -> tuple[str, list[Any]]:
    if type(scope_spans) is not dict:
        raise SpanError(f"scopeSpans entry is {type_name(scope_spans)}, expected an object")
    scope: Any = None
    for key in _SCOPE_KEYS:
        scope = scope_spans.get(key)
        if scope is not None:
            break
    if scope is not None and type(scope) is not dict:
        raise SpanError(f"scope is {type_name(scope)}, expected an object")
    name = opt_str(scope.get("name"), "scope name") if scope else ""
    return name, _list(scope_spans, ("spans",), "spans")


def _dump(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # cannot happen for orjson-parsed values, but quarantine must never raise
        return repr(value).encode()


def decode_request(
    doc: Any,
    source: str,
    where: str,
    spans: list[SpanRecord],
    quarantined: list[Quarantined],
    text: bytes | None = None,
) -> None:
    """Append the spans of one parsed ExportTraceServiceRequest to ``spans``.

    A bad resource/scope container or span is quarantined on its own (location ``"{where} span {n}"``,
    ``n`` counting spans 1-based across the document). Raises :class:`DecodeError` when ``doc`` is not an
    envelope at all, because then nothing inside it can be trusted. With ``text`` (the bytes ``doc`` was
    parsed from, e.g. one line) each span's ``raw`` re-parses it on demand instead of pinning the parsed
    tree in memory: freeing the tree right away makes the whole decode markedly faster.
    """
    if type(doc) is not dict:
        raise DecodeError(f"not an OTLP envelope: the JSON document is {type_name(doc)}, expected an object")
    top = _pick(doc, "resourceSpans", "resource_spans")
    if top is None:
        if doc:
            raise DecodeError(f"not an OTLP envelope: no resourceSpans (keys: {show(sorted(doc)[:8])})")
        return  # {} is a valid, empty ExportTraceServiceRequest
    if type(top) is not list:
        raise DecodeError(f"resourceSpans is {type_name(top)}, expected a list")
    count = 0
    for r_index, resource_spans in enumerate(top):
        try:
            resource, scope_list = _resource(resource_spans)
        except SpanError as exc:
            location = f"{where} resourceSpans[{r_index}]"
            quarantined.append(Quarantined(source, location, str(exc), _dump(resource_spans)))
            continue
        for s_index, scope_spans in enumerate(scope_list):
            try:
                scope, span_list = _scope(scope_spans)
            except SpanError as exc:
                quarantined.append(
                    Quarantined(
                        source, f"{where} resourceSpans[{r_index}].scopeSpans[{s_index}]", str(exc), _dump(scope_spans)
                    )
                )
                continue
            for span in span_list:
                count += 1
                location = f"{where} span {count}"
                raw = partial(orjson.dumps, span) if text is None else partial(span_json, text, count)
                try:
                    spans.append(decode_span(span, resource, scope, source, location, raw))
                except SpanError as exc:
                    quarantined.append(Quarantined(source, location, str(exc), _dump(span)))


def span_json(text: bytes, number: int) -> bytes:
    """JSON bytes of the ``number``-th span (1-based, in :func:`decode_request` order) of a JSON text."""
    found = _spans_of(text)
    return orjson.dumps(found[number - 1]) if 0 < number <= len(found) else b""


@lru_cache(maxsize=1)
def _spans_of(text: bytes) -> tuple[Any, ...]:
    """Span objects of a JSON text in walk order; cached because the bad path often asks for several."""
    out: list[Any] = []
    for resource_spans in _pick(orjson.loads(text), "resourceSpans", "resource_spans"):
        with suppress(SpanError):
            for scope_spans in _resource(resource_spans)[1]:
                with suppress(SpanError):
                    out.extend(_scope(scope_spans)[1])
    return tuple(out)
