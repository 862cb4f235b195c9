"""OTLP JSON values → Python: the scalars, enums, AnyValues, attribute lists and ids of a span, and the errors.

The value half of the JSON decode (:mod:`.otlp_json` walks the envelope, resources, scopes and spans and calls
these). Hot path: :func:`attributes` takes an inline fast path for ``stringValue``, ``intValue`` and
``doubleValue`` (most GenAI attributes), everything else goes through a small dispatch table. Leniency rules
(CONVENTIONS.md §6): fixed64/int64 as JSON numbers or decimal strings; doubles as numbers or
"NaN"/"Infinity"/"-Infinity"; enums as integers or their proto names; ids as hex in any case (→ lowercase) or base64
(24/12 chars, padding optional, URL-safe alphabet accepted). A value that cannot be represented raises
:class:`SpanError` with the reason.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from contextlib import suppress
from typing import Any

__all__ = [
    "KIND_NAMES",
    "STATUS_NAMES",
    "DecodeError",
    "SpanError",
    "any_value",
    "attributes",
    "opt_str",
    "parse_enum",
    "show",
    "span_id",
    "type_name",
    "uint64",
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


def type_name(value: Any) -> str:
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


def uint64(value: Any, what: str) -> int:
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
        raise SpanError(f"{what} is {type_name(kvs)}, expected a list")
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


def opt_str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value
    raise SpanError(f"{what} {show(value)} is not a string")
