"""The one writer of ingested data: canonical rows, quarantine and batch counts, in one transaction.

A batch is one bounded chunk of an input (or one OTLP/HTTP request). It lands whole or not at all: the
calls, the quarantined records and the ``ingest_batches`` row commit together. Re-ingesting a span is a
no-op (the ``(trace_id, span_id)`` primary key). The parent links of non-LLM spans that may lie between two LLM
spans go to ``span_links`` in the same transaction (ingest/fold.py follows them). :func:`store_batches` writes
several batches in ONE transaction (the OTLP receiver's group commit) with per-batch counts. With a ClickHouse store
bound (``models/clickhouse.py``) the calls go there instead (``ingest/clickhouse_load.py``); this file keeps the
batch rows, the quarantine and ``span_links`` (bookkeeping the fold reads).

Inserts are plain ``INSERT`` first: ``INSERT OR IGNORE`` was measured 3.5x slower on a 10M-row table, and
duplicates are rare. Only when the plain insert hits a key conflict is the whole unit rolled back and
redone with ``INSERT OR IGNORE`` per batch, which also gives each batch its exact duplicate count.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import orjson
import pyarrow as pa

from spanprism.ingest import clickhouse_load
from spanprism.ingest.fold import fold_calls
from spanprism.ingest.records import Batch, Quarantined, concat_links
from spanprism.models import clickhouse
from spanprism.models.schema import LLM_CALLS_SCHEMA, conform
from spanprism.models.transaction import transaction

_TS = pa.timestamp("us", tz="UTC")


@dataclass(slots=True)
class BatchCounts:
    """What one stored batch contributed."""

    batch_id: str
    spans_seen: int = 0
    calls_stored: int = 0
    duplicates: int = 0
    non_llm_skipped: int = 0
    quarantined: int = 0
    conventions: dict[str, int] = field(default_factory=dict)
    merged: int = 0  # spans folded into another span's call (ingest/fold.py)


def new_batch_id() -> str:
    """A fresh, sortable-enough batch id (time prefix keeps listings chronological)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def _quarantine_table(items: list[tuple[str, Quarantined]], now: datetime) -> pa.Table:
    return pa.table(
        {
            "id": [uuid.uuid4().hex for _ in items],
            "ingest_batch": [batch_id for batch_id, _ in items],
            "source": [q.source for _, q in items],
            "location": [q.location for _, q in items],
            "reason": [q.reason for _, q in items],
            "raw": pa.array([q.raw for _, q in items], type=pa.binary()),
            "received_at": pa.array([now] * len(items), type=_TS),
            "redriven_at": pa.nulls(len(items), type=_TS),
        }
    )


def _batch_rows(batches: Sequence[Batch], counts: Sequence[BatchCounts], now: datetime) -> pa.Table:
    finished = datetime.now(UTC)
    return pa.table(
        {
            "id": [c.batch_id for c in counts],
            "source": [b.source for b in batches],
            "started_at": pa.array([now] * len(counts), type=_TS),
            "finished_at": pa.array([finished] * len(counts), type=_TS),
            "spans_seen": pa.array([c.spans_seen for c in counts], pa.int64()),
            "calls_stored": pa.array([c.calls_stored for c in counts], pa.int64()),
            "duplicates": pa.array([c.duplicates for c in counts], pa.int64()),
            "non_llm_skipped": pa.array([c.non_llm_skipped for c in counts], pa.int64()),
            "quarantined": pa.array([c.quarantined for c in counts], pa.int64()),
            "conventions": [orjson.dumps(c.conventions).decode() for c in counts],
        }
    )


def _insert(cur: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, *, ignore: bool = False) -> int:
    """Insert an Arrow table; returns the rows actually inserted.

    The table is read by DuckDB's replacement scan of this frame's local name, not ``register``/``unregister``:
    registering a view costs ~0.9 ms of CPU a pair (measured), a fixed cost paid by every statement of every unit.
    """
    _spanprism_rows = rows  # read by name by the statement below
    verb = "INSERT OR IGNORE" if ignore else "INSERT"
    return cur.execute(f"{verb} INTO {table} SELECT * FROM _spanprism_rows").fetchone()[0]


def _write(cur: duckdb.DuckDBPyConnection, batches: Sequence[Batch], tables: list[pa.Table],
           counts: list[BatchCounts], *, ignore: bool) -> None:  # fmt: skip
    """Every row of ``batches`` inside the caller's transaction; fills ``calls_stored``/``duplicates``."""
    now = datetime.now(UTC)
    _write_calls(cur, tables, counts, concat_links([b.links for b in batches]), ignore=ignore)
    _write_bookkeeping(cur, batches, counts, now)


def _write_calls(cur: duckdb.DuckDBPyConnection, tables: list[pa.Table], counts: list[BatchCounts],
                 links: pa.Table | None, *, ignore: bool) -> None:  # fmt: skip
    folded = fold_calls(cur, tables, [c.batch_id for c in counts], links)
    tables = folded.tables
    if ignore:  # one statement per batch, so each batch learns which of its rows were already stored
        for table, c in zip(tables, counts, strict=True):
            c.calls_stored = _insert(cur, "llm_calls", table, ignore=True) if table.num_rows else 0
    else:
        rows = [t for t in tables if t.num_rows]
        if rows:
            _insert(cur, "llm_calls", pa.concat_tables(rows) if len(rows) > 1 else rows[0])
        for table, c in zip(tables, counts, strict=True):
            c.calls_stored = table.num_rows
    for b, (table, c) in enumerate(zip(tables, counts, strict=True)):
        c.duplicates = table.num_rows - c.calls_stored + folded.duplicates[b]
        c.calls_stored -= folded.rewritten[b]  # a rewritten multi-span call is not a new call
        c.merged = folded.merged[b]
    if links is not None:  # the non-LLM spans' parent links, for chains completed by later spans (ingest/fold.py)
        _insert(cur, "span_links", links, ignore=ignore)


def _write_bookkeeping(cur: duckdb.DuckDBPyConnection, batches: Sequence[Batch], counts: list[BatchCounts],
                       now: datetime) -> None:  # fmt: skip
    bad = [(c.batch_id, q) for b, c in zip(batches, counts, strict=True) for q in b.quarantined]
    if bad:
        _insert(cur, "quarantine", _quarantine_table(bad, now))
    _insert(cur, "ingest_batches", _batch_rows(batches, counts, now))


def _with_batch_id(calls: pa.Table, batch_id: str) -> pa.Table:
    calls = conform(calls)
    index = LLM_CALLS_SCHEMA.get_field_index("ingest_batch")
    return calls.set_column(index, "ingest_batch", pa.array([batch_id] * calls.num_rows, pa.string()))


def store_batches(
    con: duckdb.DuckDBPyConnection,
    batches: Sequence[Batch],
    *,
    also: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> list[BatchCounts]:
    """Write ``batches`` in ONE transaction (all or none); ``also(cur)`` runs inside it after the rows.

    Raises (after rolling back) on a storage error other than a key conflict.
    """
    counts = [BatchCounts(batch_id=b.batch_id or new_batch_id(), spans_seen=b.spans_seen,
                          non_llm_skipped=b.non_llm_skipped, quarantined=len(b.quarantined),
                          conventions=dict(b.conventions)) for b in batches]  # fmt: skip
    tables = [_with_batch_id(b.calls, c.batch_id) for b, c in zip(batches, counts, strict=True)]
    store = clickhouse.bound()
    if store is not None:  # calls to ClickHouse first; the batch rows (and ``also``) then commit in DuckDB
        now = datetime.now(UTC)
        links = concat_links([b.links for b in batches])
        stored, duplicates, merged = clickhouse_load.write_calls(store, tables, [c.batch_id for c in counts], links,
                                                                 con)  # fmt: skip
        for c, s, d, m in zip(counts, stored, duplicates, merged, strict=True):
            c.calls_stored, c.duplicates, c.merged = s, d, m
        with transaction(con) as cur:
            if links is not None:  # kept locally: the next units' scratch folds read them (ingest/clickhouse_load.py)
                _insert(cur, "span_links", links, ignore=True)
            _write_bookkeeping(cur, batches, counts, now)
            if also:
                also(cur)
        return counts
    try:
        with transaction(con) as cur:
            _write(cur, batches, tables, counts, ignore=False)
            if also:
                also(cur)
    except duckdb.ConstraintException:  # a span stored before (or twice in this unit): redo, skipping those
        with transaction(con) as cur:
            _write(cur, batches, tables, counts, ignore=True)
            if also:
                also(cur)
    return counts


def store_batch(con: duckdb.DuckDBPyConnection, batch: Batch) -> BatchCounts:
    """Write one batch atomically and return its counts. Raises (after rolling back) on a storage error."""
    return store_batches(con, [batch])[0]
