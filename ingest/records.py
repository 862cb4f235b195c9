"""The shapes passed between decode, normalize and load.

``decode`` turns bytes into :class:`SpanRecord` dicts (one per OTLP span, encoding-independent);
``normalize`` turns those into canonical ``llm_calls`` Arrow rows; the pipeline hands them to ``load`` as one
:class:`Batch` (the same object from the decode worker to the writer, never unpacked and repacked). Anything that
cannot be used becomes a :class:`Quarantined` item carrying its raw bytes and a precise reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
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
    links: pa.Table | None = None  # parent links of non-LLM spans (models.schema.SPAN_LINKS_SCHEMA); None: none


@dataclass(slots=True)
class Batch:
    """Canonical rows of one input slice (a chunk, a source's consecutive chunks, an OTLP request) with what was seen
    making them: decode + normalize produce it, the loader writes it whole or not at all. Picklable (it comes back
    from decode worker processes)."""

    source: str
    calls: pa.Table
    quarantined: list[Quarantined]
    spans_seen: int
    non_llm_skipped: int = 0
    conventions: dict[str, int] = field(default_factory=dict)
    size: int = 0  # input bytes behind it (for progress)
    batch_id: str = ""  # empty: the loader assigns a fresh id
    links: pa.Table | None = None  # parent links of non-LLM spans that may sit between two LLM spans; None: none

    def __reduce__(self) -> tuple[Callable[..., Batch], tuple[Any, ...]]:
        """Pickled with its tables as Arrow IPC streams: one C++ pass each way. A table's own pickling rebuilds every
        column's buffers in Python (measured 0.68 ms to pickle and 0.46 ms to unpickle a 500-span body's calls,
        against 0.08 ms each way as IPC), and the decode workers send every batch to the writer this way."""
        links = None if self.links is None else _to_ipc(self.links)
        fields = (self.source, _to_ipc(self.calls), self.quarantined, self.spans_seen, self.non_llm_skipped,
                  self.conventions, self.size, self.batch_id, links)  # fmt: skip
        return _batch_from_ipc, fields


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _batch_from_ipc(source: str, calls: bytes, quarantined: list[Quarantined], spans_seen: int, non_llm_skipped: int,
                    conventions: dict[str, int], size: int, batch_id: str, links: bytes | None) -> Batch:  # fmt: skip
    """:meth:`Batch.__reduce__`'s inverse: the tables read from their IPC streams without a copy."""
    return Batch(source, pa.ipc.open_stream(calls).read_all(), quarantined, spans_seen, non_llm_skipped, conventions,
                 size, batch_id, None if links is None else pa.ipc.open_stream(links).read_all())  # fmt: skip


def merge_batches(batches: Sequence[Batch]) -> Batch:
    """Several batches of one source as one (one write transaction, one ``ingest_batches`` row)."""
    if len(batches) == 1:
        return batches[0]
    conventions: Counter[str] = Counter()
    for b in batches:
        conventions.update(b.conventions)
    return Batch(
        source=batches[0].source,
        calls=pa.concat_tables([b.calls for b in batches]),
        quarantined=[q for b in batches for q in b.quarantined],
        spans_seen=sum(b.spans_seen for b in batches),
        non_llm_skipped=sum(b.non_llm_skipped for b in batches),
        conventions=dict(conventions),
        size=sum(b.size for b in batches),
        links=concat_links([b.links for b in batches]),
    )


def concat_links(tables: Sequence[pa.Table | None]) -> pa.Table | None:
    """The parent links of several batches as one table (None when none has any)."""
    present = [t for t in tables if t is not None and t.num_rows]
    if not present:
        return None
    return present[0] if len(present) == 1 else pa.concat_tables(present)
