"""The loader: atomic batches, idempotent on (trace_id, span_id), quarantine kept with raw bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pytest

from spanprism.api.storage.connect import open_db
from spanprism.ingest.load import store_batch
from spanprism.ingest.records import Batch, Quarantined
from spanprism.models.schema import conform


def _calls(n: int, *, trace: str = "a" * 32) -> pa.Table:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return conform(
        pa.table(
            {
                "trace_id": [trace] * n,
                "span_id": [f"{i:016x}" for i in range(n)],
                "start_time": pa.array([start] * n, pa.timestamp("us", tz="UTC")),
                "duration_ms": [100.0 + i for i in range(n)],
                "input_tokens": [1000] * n,
                "status": ["ok"] * n,
            }
        )
    )


@pytest.fixture
def con(tmp_path):
    c = open_db(tmp_path / "l.duckdb")
    yield c
    c.close()


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_store_and_reingest_is_noop(con):
    first = store_batch(con, Batch(source="f", calls=_calls(5), quarantined=[], spans_seen=5))
    assert (first.calls_stored, first.duplicates) == (5, 0)
    again = store_batch(con, Batch(source="f", calls=_calls(5), quarantined=[], spans_seen=5))
    assert (again.calls_stored, again.duplicates) == (0, 5)
    assert _count(con, "llm_calls") == 5
    assert con.execute("SELECT DISTINCT ingest_batch FROM llm_calls").fetchall() == [(first.batch_id,)]
    assert _count(con, "ingest_batches") == 2


def test_duplicates_inside_one_batch_store_once(con):
    calls = pa.concat_tables([_calls(3), _calls(3)])
    counts = store_batch(con, Batch(source="f", calls=calls, quarantined=[], spans_seen=6))
    assert (counts.calls_stored, counts.duplicates) == (3, 3)


def test_quarantine_keeps_raw_bytes_and_reason(con):
    bad = Quarantined(source="x.jsonl", location="line 7", reason="invalid JSON: unexpected end", raw=b'{"resourceSp')
    counts = store_batch(con, Batch(source="x.jsonl", calls=_calls(2), quarantined=[bad], spans_seen=3))
    assert counts.quarantined == 1
    row = con.execute("SELECT source, location, reason, raw, ingest_batch FROM quarantine").fetchone()
    assert row == ("x.jsonl", "line 7", "invalid JSON: unexpected end", b'{"resourceSp', counts.batch_id)
    batch = con.execute("SELECT calls_stored, quarantined, spans_seen FROM ingest_batches").fetchone()
    assert batch == (2, 1, 3)


def test_failed_batch_leaves_nothing(con):
    store_batch(con, Batch(source="ok", calls=_calls(2), quarantined=[], spans_seen=2))
    broken = _calls(3, trace="b" * 32).set_column(0, "trace_id", pa.array(["b" * 32, None, "b" * 32], pa.string()))
    bad = Quarantined(source="bad", location="line 1", reason="r", raw=b"x")
    with pytest.raises(duckdb.Error):
        store_batch(con, Batch(source="bad", calls=broken, quarantined=[bad], spans_seen=4))
    assert _count(con, "llm_calls") == 2
    assert _count(con, "quarantine") == 0
    assert _count(con, "ingest_batches") == 1
    # The connection is still usable after the rollback.
    assert (
        store_batch(
            con, Batch(source="ok2", calls=_calls(1, trace="c" * 32), quarantined=[], spans_seen=1)
        ).calls_stored
        == 1
    )
