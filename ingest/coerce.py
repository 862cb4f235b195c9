"""Value coercion for span attributes, and the exception that sends a span to quarantine.

Attribute values arrive as plain Python (str, bool, int, float, bytes, list, dict) whatever the wire encoding,
but instrumentations disagree on types: token counts appear as ints, integral floats or digit strings,
booleans as ``True`` or ``"true"``, JSON payloads as strings or already-structured dicts. These helpers accept
every honest spelling and raise :class:`Rejected` with a precise, human-readable reason for anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson


class Rejected(ValueError):
    """A span is an LLM call but cannot be stored; the message is the quarantine reason."""


def first(attrs: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    """The first key of ``keys`` present (value not None) in ``attrs``, with its value."""
    for key in keys:
        value = attrs.get(key)
        if value is not None:
            return key, value
    return None, None


def first_str(attrs: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first present value of ``keys`` as a non-empty string (lists give their first element)."""
    for key in keys:
        value = attrs.get(key)
        if value is None:
            continue
        text = value if type(value) is str else as_str(value)  # the common case without a call
        if text:
            return text
    return None


def as_str(value: Any) -> str | None:
    """A scalar attribute as text; a list (captured HTTP headers are string[]) gives its first element."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return as_str(value[0]) if value else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool | int | float):
        return str(value)
    return None


def token_count(key: str, value: Any, what: str) -> int:
    """Parse a token count read from ``key`` (canonical name ``what``), rejecting garbage and negatives.

    Accepts int, integral float (some SDKs emit doubles) and digit strings (stringValue attributes).
    """
    if isinstance(value, bool):  # bool is an int subclass: True is not a token count
        raise Rejected(f"{key} is not an integer: {value!r}")
    if isinstance(value, int):
        count = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        count = int(value)
    elif isinstance(value, str):
        try:
            count = int(value.strip())
        except ValueError:
            raise Rejected(f"{key} is not an integer: {value!r}") from None
    else:
        raise Rejected(f"{key} is not an integer: {value!r}")
    if count < 0:
        raise Rejected(f"negative {what} tokens: {count}")
    return count


def seconds(key: str, value: Any) -> float:
    """A latency attribute in seconds (or whatever unit the caller knows), rejecting non-finite values."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise Rejected(f"{key} is not a number: {value!r}") from None
    else:
        raise Rejected(f"{key} is not a number: {value!r}")
    if not math.isfinite(number) or number < 0:
        raise Rejected(f"{key} is not a finite non-negative number: {value!r}")
    return number


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})


def as_bool(value: Any) -> bool | None:
    """A boolean attribute; None when the value is not recognisably boolean (treated as absent)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    return None


def json_object(value: Any) -> dict[str, Any] | None:
    """A JSON object carried as a dict (kvlistValue) or a JSON string; None when it is neither."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str | bytes) and value[:1] in ("{", b"{"):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None
