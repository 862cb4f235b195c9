"""OTLP JSON (an ``ExportTraceServiceRequest`` already parsed by orjson) → :class:`SpanRecord`.

This is the ingest hot path, so the walk is written for CPython speed: attribute values take an inline
fast path for ``stringValue`` and ``intValue`` (most GenAI attributes), everything else goes through a
small dispatch table. Leniency rules (CONVENTIONS.md §6):

* keys: lowerCamelCase (the OTLP spec) or snake_case (generic protobuf JSON marshallers); legacy
  ``instrumentationLibrarySpans``/``instrumentationLibrary`` as well as ``scopeSpans``/``scope``;
* ids: hex in any case (→ lowercase) or base64 (24/12 chars, padding optional, URL-safe alphabet accepted);
* fixed64/int64: JSON numbers or decimal strings; doubles: numbers or "NaN"/"Infinity"/"-Infinity";
* enums (``kind``, ``status.code``): integers or their proto names; unknown fields are ignored.

Only what cannot be represented as a SpanRecord is rejected (:class:`SpanError`); semantics (end before
start, negative tokens, …) are the normalizer's business.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from contextlib import suppress
from functools import lru_cache, partial
from typing import Any

import orjson

from spanprism.ingest.records import Quarantined, SpanEvent, SpanRecord

__all__ = [
    "KIND_NAMES",
    "STATUS_NAMES",
    "DecodeError",
    "SpanError",
    "any_value",
    "attributes",
    "decode_request",
    "decode_span",
    "parse_enum",
    "show",
    "span_id",
    "span_json",
]


class DecodeError(ValueError):
    """The input as a whole is not a decodable OTLP trace export (an HTTP 400, or one quarantined line/record)."""


class SpanError(ValueError):
    """One span (or one container of spans) cannot be represented as a SpanRecord; the message is the reason."""


def _enum(prefix: str, *names: str) -> dict[str, int]:
    """Proto enum names, full (``SPAN_KIND_CLIENT``) and short (``CLIENT``), to their numbers."""
    return {**{name: i for i, name in enumerate(names)}, **{prefix + name: i for i, name in enumerate(names)}}


KIND_NAMES = _enum("SPAN_KIND_", "UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_NAMES = _enum("STATUS_CODE_", "UNSET", "OK", "ERROR")
_TYPE_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}
_U64 = 1 << 64
_ZERO_IDS = frozenset({"0" * 16, "0" * 32})


def show(value: Any, limit: int = 60) -> str:
    """A short repr for error messages (a 10 MB bad value must not end up in a reason string)."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}…({len(value)} long)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"…({len(text)} chars)"


def _tname(value: Any) -> str:
    """JSON type name of a parsed value, for reasons like 'spans is a string, expected a list'."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def parse_enum(value: Any, names: dict[str, int], what: str) -> int:
    """An enum given as an integer, a decimal string or its proto name (with or without the prefix)."""
    if value is None or type(value) is int:
        return value or 0
    if type(value) is str:
        number = names.get(value.upper())
        if number is not None:
            return number
        if value.isascii() and value.isdigit():
            return int(value)
    raise SpanError(f"{what} {show(value)} is not a known enum value")


def _uint64(value: Any, what: str) -> int:
    """A fixed64 (times in ns): JSON number or decimal string; absent means 0 as in protobuf."""
    if (
        (type(value) is str and value.isdecimal())
        or type(value) is int
        or (type(value) is float and value.is_integer())
    ):
        number = int(value)
    elif value is None:
        return 0
    else:
        raise SpanError(f"{what} {show(value)} is not an integer")
    if not 0 <= number < _U64:
        raise SpanError(f"{what} {show(value)} is outside the fixed64 range")
    return number


def _int64(value: Any) -> int:
    """An AnyValue intValue: number or decimal string (as lenient as ``int()``, which the fast path uses)."""
    if type(value) is int or (type(value) is float and value.is_integer()):
        return int(value)
    if type(value) is str:
        with suppress(ValueError):
            return int(value)
    raise SpanError(f"intValue {show(value)} is not an integer")


def _double(value: Any) -> float:
    """An AnyValue doubleValue: number, or the strings "NaN"/"Infinity"/"-Infinity" (or a decimal string)."""
    if type(value) is float or type(value) is int:
        return float(value)
    if type(value) is str:
        with suppress(ValueError):
            return float(value)
    raise SpanError(f"doubleValue {show(value)} is not a number")


def _typed(kind: type, name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if type(value) is kind:
            return value
        raise SpanError(f"{name} {show(value)} is not a {kind.__name__}")

    return check


def _bytes(value: Any) -> bytes:
    if type(value) is str:
        with suppress(binascii.Error, ValueError):
            return _b64(value)
    raise SpanError(f"bytesValue {show(value)} is not base64")


def _array(value: Any) -> list[Any]:
    if type(value) is dict:
        values = value.get("values")
        if values is None or type(values) is list:
            return [any_value(item) for item in values or ()]
    raise SpanError(f"arrayValue must be an object with a 'values' list, got {show(value)}")


def _kvlist(value: Any) -> dict[str, Any]:
    if type(value) is dict:
        return attributes(value.get("values"), "kvlistValue.values")
    raise SpanError(f"kvlistValue must be an object with a 'values' list, got {show(value)}")


_string, _boolean = _typed(str, "stringValue"), _typed(bool, "boolValue")
_ANY = {
    "stringValue": _string,
    "boolValue": _boolean,
    "intValue": _int64,
    "doubleValue": _double,
    "arrayValue": _array,
    "kvlistValue": _kvlist,
    "bytesValue": _bytes,
    "string_value": _string,
    "bool_value": _boolean,
    "int_value": _int64,
    "double_value": _double,
    "array_value": _array,
    "kvlist_value": _kvlist,
    "bytes_value": _bytes,
}


def any_value(value: Any) -> Any:
    """Convert one AnyValue object to a Python value; an empty (or unknown-only) AnyValue is None."""
    if type(value) is not dict:
        if value is None:
            return None
        raise SpanError(f"attribute value {show(value)} is not an AnyValue object")
    for name, inner in value.items():
        convert = _ANY.get(name)
        if convert is not None:
            return convert(inner)
    return None


def attributes(kvs: Any, what: str = "attributes") -> dict[str, Any]:
    """Flatten a list of ``{key, value}`` into ``{key: python value}`` (last duplicate wins).

    The loop trusts the shape and lets Python raise; any exception re-runs the checked walk, which either
    finds the precise reason (raised as SpanError) or the legitimate odd case (no value, a null list).
    """
    out: dict[str, Any] = {}
    try:
        for kv in kvs:
            value = kv["value"]
            if "stringValue" in value:
                inner = value["stringValue"]
                if type(inner) is not str:
                    raise TypeError
                out[kv["key"]] = inner
            elif "intValue" in value:
                inner = value["intValue"]
                out[kv["key"]] = int(inner) if type(inner) is str else _int64(inner)
            elif "doubleValue" in value:
                inner = value["doubleValue"]
                out[kv["key"]] = inner if type(inner) is float else _double(inner)
            else:
                out[kv["key"]] = any_value(value)
    except (KeyError, TypeError, ValueError, AttributeError):
        return _checked_attributes(kvs, what)
    return out


def _checked_attributes(kvs: Any, what: str) -> dict[str, Any]:
    """The validating walk behind :func:`attributes` (raises SpanError with the precise reason)."""
    if type(kvs) is not list:
        if kvs is None:
            return {}
        raise SpanError(f"{what} is {_tname(kvs)}, expected a list")
    out: dict[str, Any] = {}
    for kv in kvs:
        key = kv.get("key") if type(kv) is dict else None
        if type(key) is not str:
            raise SpanError(f"{what}: entry {show(kv)} is not a {{key, value}} object with a string key")
        try:
            out[key] = any_value(kv.get("value"))
        except SpanError as exc:
            raise SpanError(f"{what} {show(key)}: {exc}") from None
    return out


def _b64(text: str) -> bytes:
    """Decode standard or URL-safe base64, padding optional."""
    text = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(text)
    return base64.b64decode(text, validate=True)


def span_id(value: Any, size: int, what: str, *, zero_ok: bool = False) -> str:
    """Normalize a trace (16 bytes) or span (8 bytes) id given as hex or base64 to lowercase hex.

    An all-zero id is invalid (OTel spec) unless ``zero_ok``, in which case it comes back as "".
    """
    try:  # fast path: well-formed hex (fromhex skips whitespace only between bytes, so the length check holds)
        if len(value) == 2 * size:
            text = bytes.fromhex(value).hex()
            if len(text) == 2 * size and text not in _ZERO_IDS:
                return text
    except (TypeError, ValueError):
        pass
    if type(value) is not str or not value:
        raise SpanError(f"{what} is missing" if value in (None, "") else f"{what} {show(value)} is not a string")
    try:
        raw = bytes.fromhex(value) if len(value) == 2 * size else _b64(value)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise SpanError(f"{what} {show(value)} is not {size} bytes of hex or base64")
    if raw.count(0) == size:
        if zero_ok:
            return ""
        raise SpanError(f"{what} is all zeros")
    return raw.hex()


def _parent_id(value: Any) -> str | None:
    """Empty, absent or all-zero parentSpanId means a root span."""
    if value is None or value == "":
        return None
    return span_id(value, 8, "parentSpanId", zero_ok=True) or None


def _events(events: Any) -> list[SpanEvent]:
    if type(events) is not list:
        if events is None:
            return []
        raise SpanError(f"events is {_tname(events)}, expected a list")
    out: list[SpanEvent] = []
    for event in events:
        if type(event) is not dict:
            raise SpanError(f"event {show(event)} is not an object")
        when = event.get("timeUnixNano")
        name = event.get("name")
        out.append(
            {
                "name": name if type(name) is str else _opt_str(name, "event name"),
                "time_ns": _uint64(when if when is not None else event.get("time_unix_nano"), "event timeUnixNano"),
                "attributes": attributes(event.get("attributes"), "event attributes"),
            }
        )
    return out


def _opt_str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value
    raise SpanError(f"{what} {show(value)} is not a string")


def _status(status: Any) -> tuple[int, str]:
    if status is None:
        return 0, ""
    if type(status) is not dict:
        raise SpanError(f"status is {_tname(status)}, expected an object")
    code = status.get("code")
    return (
        code if type(code) is int else parse_enum(code, STATUS_NAMES, "status.code"),
        _opt_str(status.get("message"), "status.message"),
    )


def _pick(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return value if value is not None else obj.get(snake)


def decode_span(
    span: Any, resource: dict[str, Any], scope: str, source: str, location: str, raw: Callable[[], bytes]
) -> SpanRecord:
    """One OTLP JSON span object → SpanRecord (raises SpanError with the reason)."""
    if type(span) is not dict:
        raise SpanError(f"span is {_tname(span)}, expected an object")
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
        "name": name if type(name) is str else _opt_str(name, "name"),
        "kind": kind if type(kind) is int else parse_enum(kind, KIND_NAMES, "kind"),
        "start_ns": int(start) if type(start) is str and start.isdecimal() else _uint64(start, "startTimeUnixNano"),
        "end_ns": int(end) if type(end) is str and end.isdecimal() else _uint64(end, "endTimeUnixNano"),
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
                raise SpanError(f"{name} is {_tname(value)}, expected a list")
            return value
    return []


_SCOPE_LISTS = ("scopeSpans", "scope_spans", "instrumentationLibrarySpans", "instrumentation_library_spans")
_SCOPE_KEYS = ("scope", "instrumentationLibrary", "instrumentation_library")


def _resource(resource_spans: Any) -> tuple[dict[str, Any], list[Any]]:
    if type(resource_spans) is not dict:
        raise SpanError(f"resourceSpans entry is {_tname(resource_spans)}, expected an object")
    resource = resource_spans.get("resource")
    if resource is not None and type(resource) is not dict:
        raise SpanError(f"resource is {_tname(resource)}, expected an object")
    attrs = attributes(resource.get("attributes"), "resource attributes") if resource else {}
    return attrs, _list(resource_spans, _SCOPE_LISTS, "scopeSpans")


def _scope(scope_spans: Any) -> tuple[str, list[Any]]:
    if type(scope_spans) is not dict:
        raise SpanError(f"scopeSpans entry is {_tname(scope_spans)}, expected an object")
    scope: Any = None
    for key in _SCOPE_KEYS:
        scope = scope_spans.get(key)
        if scope is not None:
            break
    if scope is not None and type(scope) is not dict:
        raise SpanError(f"scope is {_tname(scope)}, expected an object")
    name = _opt_str(scope.get("name"), "scope name") if scope else ""
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
        raise DecodeError(f"not an OTLP envelope: the JSON document is {_tname(doc)}, expected an object")
    top = _pick(doc, "resourceSpans", "resource_spans")
    if top is None:
        if doc:
            raise DecodeError(f"not an OTLP envelope: no resourceSpans (keys: {show(sorted(doc)[:8])})")
        return  # {} is a valid, empty ExportTraceServiceRequest
    if type(top) is not list:
        raise DecodeError(f"resourceSpans is {_tname(top)}, expected a list")
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
