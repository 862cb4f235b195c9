"""The shapes passed between decode, normalize and load.

``decode`` turns bytes into :class:`SpanRecord` dicts (one per OTLP span, encoding-independent);
``normalize`` turns those into canonical ``llm_calls`` Arrow rows; ``load`` writes them. Anything that
cannot be used becomes a :class:`Quarantined` item carrying its raw bytes and a precise reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import pyarrow as pa


class SpanEvent(TypedDict):
    """One span event, attributes flattened to Python values."""

    name: str
    time_ns: int
    attributes: dict[str, Any]


class SpanRecord(TypedDict):
    """One OTLP span, independent of its wire encoding (JSON, protobuf, legacy envelope).

    ``attributes``/``resource`` values are plain Python: str, bool, int, float, bytes, list (arrayValue)
    or dict (kvlistValue). Ids are lowercase hex; ``parent_span_id`` is None for a root span.
    ``raw`` re-serializes the span (JSON bytes) for quarantine; it is only called on the bad path.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    events: list[SpanEvent]
    status_code: int
    status_message: str
    source: str
    location: str
    raw: Callable[[], bytes]


@dataclass(slots=True)
class Quarantined:
    """A record that could not be stored, with where it came from and why."""

    source: str
    location: str
    reason: str
    raw: bytes


@dataclass(slots=True)
class RawChunk:
    """A bounded slice of an input holding only whole records (picklable, for worker processes).

    ``fmt`` is one of ``jsonl`` (one OTLP JSON document per line), ``json`` (one document),
    ``proto`` (one ExportTraceServiceRequest), ``proto_lp`` (4-byte big-endian length-prefixed
    records), ``proto_lp_zstd`` (the same, each record zstd-compressed: legacy Collector mode).
    ``first`` is the 1-based line or record number of the chunk's first record, ``offset`` its byte offset.
    """

    source: str
    fmt: str
    data: bytes
    first: int = 1
    offset: int = 0


@dataclass(slots=True)
class DecodeResult:
    """Spans decoded from one chunk, plus what had to be quarantined."""

    spans: list[SpanRecord] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass(slots=True)
class NormalizeResult:
    """Canonical rows (``spanprism.models.schema.LLM_CALLS_SCHEMA``) plus counts for the ingest summary."""

    table: pa.Table
    quarantined: list[Quarantined] = field(default_factory=list)
    non_llm_skipped: int = 0
    conventions: dict[str, int] = field(default_factory=dict)
