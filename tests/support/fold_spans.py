"""OTLP JSON lines of captured multi-span calls, for the span-merging tests."""

from __future__ import annotations

from typing import Any

import orjson

from spanprism.attribution.simulator.otlp.encoding import resource_spans


def otlp_line(span: dict[str, Any]) -> bytes:
    """One SpanRecord-shaped dict as one OTLP JSON export request line."""
    return orjson.dumps({"resourceSpans": [resource_spans(span)]})
