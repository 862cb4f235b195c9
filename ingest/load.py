"""The one writer of ingested data: canonical rows, quarantine and batch counts, in one transaction.

A batch is one bounded chunk of an input (or one OTLP/HTTP request). It lands whole or not at all: the
calls, the quarantined records and the ``ingest_batches`` row commit together. Re-ingesting a span is a
no-op (``INSERT OR IGNORE`` on the ``(trace_id, span_id)`` primary key).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import orjson
import pyarrow as pa

from ingest.records import Quarantined
from models.schema import LLM_CALLS_SCHEMA, conform
from models.transaction import transaction


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


def new_batch_id() -> str:
    """A fresh, sortable-enough batch id (time prefix keeps listings chronological)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def _quarantine_table(batch_id: str, items: list[Quarantined], now: datetime) -> pa.Table:
    return pa.table(
        {
            "id": [uuid.uuid4().hex for _ in items],
            "ingest_batch": [batch_id] * len(items),
            "source": [q.source for q in items],
            "location": [q.location for q in items],
            "reason": [q.reason for q in items],
            "raw": pa.array([q.raw for q in items], type=pa.binary()),
            "received_at": pa.array([now] * len(items), type=pa.timestamp("us", tz="UTC")),
            "redriven_at": pa.nulls(len(items), type=pa.timestamp("us", tz="UTC")),
        }
    )


def store_batch(
    con: duckdb.DuckDBPyConnection,
    *,
    source: str,
    calls: pa.Table,
    quarantined: list[Quarantined],
    spans_seen: int,
    non_llm_skipped: int = 0,
    conventions: dict[str, int] | None = None,
    batch_id: str | None = None,
) -> BatchCounts:
    """Write one batch atomically and return its counts. Raises (after rolling back) on a storage error."""
    batch_id = batch_id or new_batch_id()
    now = datetime.now(UTC)
    calls = conform(calls)
    calls = calls.set_column(
        LLM_CALLS_SCHEMA.get_field_index("ingest_batch"),
        "ingest_batch",
        pa.array([batch_id] * calls.num_rows, pa.string()),
    )
    counts = BatchCounts(
        batch_id=batch_id,
        spans_seen=spans_seen,
        non_llm_skipped=non_llm_skipped,
        quarantined=len(quarantined),
        conventions=dict(conventions or {}),
    )
    with transaction(con) as cur:
        if calls.num_rows:
            cur.register("_spanprism_batch", calls)
            counts.calls_stored = cur.execute(
                "INSERT OR IGNORE INTO llm_calls SELECT * FROM _spanprism_batch"
            ).fetchone()[0]
            cur.unregister("_spanprism_batch")
        counts.duplicates = calls.num_rows - counts.calls_stored
        if quarantined:
            cur.register("_spanprism_quarantine", _quarantine_table(batch_id, quarantined, now))
            cur.execute("INSERT INTO quarantine SELECT * FROM _spanprism_quarantine")
            cur.unregister("_spanprism_quarantine")
        cur.execute(
            "INSERT INTO ingest_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                batch_id, source, now, datetime.now(UTC), counts.spans_seen, counts.calls_stored, counts.duplicates,
                counts.non_llm_skipped, counts.quarantined, orjson.dumps(counts.conventions).decode(),
            ],
        )  # fmt: skip
    return counts
