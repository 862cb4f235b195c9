"""Hand-built OTLP JSON spans and lines for decoder tests, with seeded ids."""

from __future__ import annotations

import random
from typing import Any

import orjson
from opentelemetry.sdk.trace.id_generator import IdGenerator

T0 = 1_760_000_000_000_000_000


class SeededIds(IdGenerator):
    """Deterministic ids so encodings (and any failure output) are the same on every run."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1


def otlp_line(*spans: dict[str, Any], scope_spans: Any = None) -> bytes:
    """One canonical OTLP JSON line holding ``spans`` (or a raw ``scopeSpans`` value)."""
    scopes = scope_spans if scope_spans is not None else [{"scope": {"name": "s"}, "spans": list(spans)}]
    return orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                    "scopeSpans": scopes,
                }
            ]
        }
    )


def good_span(number: int, **changes: Any) -> dict[str, Any]:
    """A valid span whose span id encodes ``number`` (so a test can tell where each one came from)."""
    span = {
        "traceId": "ab" * 16,
        "spanId": f"{number:016x}",
        "name": f"span {number}",
        "kind": 3,
        "startTimeUnixNano": str(T0 + number),
        "endTimeUnixNano": str(T0 + number + 1000),
        "attributes": [{"key": "n", "value": {"intValue": str(number)}}],
    }
    span.update(changes)
    return span
