"""The receiver's cheaper writer paths give the same answers as the ones they replace.

* :func:`spanprism.ingest.fold_gate.stored_may_pair` (one semi join per key kind, the unit's keys read as Arrow) says
  "maybe" exactly when the lookup it replaced did (``OR``-ed ``IN (unnest($list))`` conditions, kept here as the
  reference), on seeded random units against a seeded random stored window: every key kind hits, misses, rows
  outside the window, NULL keys.
* A :class:`spanprism.ingest.records.Batch` pickled (as the decode workers send it, with its tables as Arrow IPC)
  comes back equal, schema and metadata included, with and without links and quarantined records.
* The loader's inserts (DuckDB's replacement scan of an Arrow table) store the same rows, and a key conflict still
  takes the ``INSERT OR IGNORE`` path with exact duplicate counts.
"""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spanprism.api.storage.connect import open_db
from spanprism.ingest.fold_gate import SPECIAL, between, stored_may_pair
from spanprism.ingest.identity import SDK_CONVENTION, STREAM_LOG_PREFIX
from spanprism.ingest.load import store_batches
from spanprism.ingest.records import Batch, Quarantined
from spanprism.models.schema import CALL_SPAN_COLUMNS, LLM_CALLS_SCHEMA, SPAN_LINKS_SCHEMA

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)
MODELS = ("gpt-4o", "claude-3-5-sonnet", "llama-3")


def _reference(cur: duckdb.DuckDBPyConnection, new: pa.Table, links: pa.Table, lo: str, hi: str) -> bool:
    """The lookup before this change (ingest/fold.py's ``_stored_may_pair`` at main d39b2d0)."""
    traces = pa.chunked_array([*new.column("trace_id").chunks, *links.column("trace_id").chunks], pa.string())
    keys = {
        "t": pc.unique(traces).to_pylist(),
        "r": pc.unique(new.column("response_id").drop_null()).to_pylist(),
        "m": pc.unique(new.column("request_model").drop_null()).to_pylist(),
    }
    window = between(lo, hi)
    relevant = (f"{window} AND (trace_id IN (SELECT unnest($t)) OR response_id IN (SELECT unnest($r))"
                f" OR ({SPECIAL} AND request_model IN (SELECT unnest($m))))")  # fmt: skip
    found = cur.execute(
        f"SELECT EXISTS (SELECT 1 FROM llm_calls WHERE {relevant}) OR EXISTS (SELECT 1 FROM llm_call_spans WHERE"
        f" {relevant}) OR EXISTS (SELECT 1 FROM span_links WHERE {window} AND trace_id IN (SELECT unnest($t)))",
        keys,
    ).fetchall()
    return bool(found[0][0])


def _calls(rng: random.Random, n: int, prefix: str, *, special: float = 0.0) -> pa.Table:
    """``n`` call rows: ids from a small pool (so units and the stored side share some), times within ±40 min."""
    rows = []
    for _ in range(n):
        kind = rng.random()
        rows.append({
            "trace_id": f"{rng.randrange(60):032x}",
            "span_id": f"{prefix}{rng.randrange(1 << 40):014x}"[:16],
            "response_id": None if rng.random() < 0.3 else f"resp-{rng.randrange(80)}",
            "request_model": None if rng.random() < 0.1 else rng.choice(MODELS),
            "span_name": f"{STREAM_LOG_PREFIX} x" if kind < special / 2 else "chat",
            "source_convention": SDK_CONVENTION if special / 2 <= kind < special else "genai_semconv",
            "start_time": T0 + timedelta(minutes=rng.uniform(-40, 40)),
        })  # fmt: skip
    columns = {f.name: [r.get(f.name) for r in rows] for f in LLM_CALLS_SCHEMA}
    return pa.Table.from_pydict(columns, schema=LLM_CALLS_SCHEMA)


def _links(rng: random.Random, n: int) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "trace_id": [f"{rng.randrange(60):032x}" for _ in range(n)],
            "span_id": [f"{rng.randrange(1 << 60):016x}" for _ in range(n)],
            "parent_span_id": [f"{rng.randrange(1 << 60):016x}" for _ in range(n)],
            "start_time": [T0 + timedelta(minutes=rng.uniform(-40, 40)) for _ in range(n)],
        },
        schema=SPAN_LINKS_SCHEMA,
    )


def _store(con: duckdb.DuckDBPyConnection, rng: random.Random) -> None:
    stored = _calls(rng, rng.randrange(0, 6), "c", special=0.5)
    members = _calls(rng, rng.randrange(0, 4), "m", special=0.5).drop_columns(["merged_span_ids"])
    members = members.append_column("call_trace_id", members.column("trace_id"))
    members = members.append_column("call_span_id", members.column("span_id"))
    assert tuple(members.column_names) == CALL_SPAN_COLUMNS
    links = _links(rng, rng.randrange(0, 4))
    for table, rows in (("llm_calls", stored), ("llm_call_spans", members), ("span_links", links)):
        con.register("_rows", rows)
        con.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM _rows")
        con.unregister("_rows")


@pytest.mark.parametrize("seed", range(4))
def test_stored_gate_answers_as_the_lookup_it_replaced(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    con = open_db(tmp_path / "gate.duckdb")
    answers = []
    for _ in range(60):
        con.execute("DELETE FROM llm_calls; DELETE FROM llm_call_spans; DELETE FROM span_links")
        _store(con, rng)
        new = _calls(rng, rng.randrange(1, 5), "n", special=0.0 if rng.random() < 0.7 else 0.5)
        links = _links(rng, rng.randrange(0, 3))
        lo = (T0 - timedelta(minutes=rng.uniform(0, 30))).isoformat()
        hi = (T0 + timedelta(minutes=rng.uniform(0, 30))).isoformat()
        expected = _reference(con, new, links, lo, hi)
        assert stored_may_pair(con, new, links, lo, hi) is expected
        answers.append(expected)
    con.close()
    assert 10 <= sum(answers) <= 50  # both answers exercised, neither trivially


def _batch(rows: int, *, links: bool, bad: bool) -> Batch:
    rng = random.Random(rows)
    calls = _calls(rng, rows, "b")
    quarantined = [Quarantined("otlp/http", "span 3", "bad ids", b"\x00raw")] if bad else []
    return Batch("otlp/http", calls, quarantined, rows + 2, non_llm_skipped=2, conventions={"genai_semconv": rows},
                 size=1234, batch_id="b-1", links=_links(rng, 3) if links else None)  # fmt: skip


@pytest.mark.parametrize(("rows", "links", "bad"), [(0, False, False), (5, True, False), (40, False, True)])
def test_batch_pickles_whole_through_arrow_ipc(rows: int, links: bool, bad: bool) -> None:
    batch = _batch(rows, links=links, bad=bad)
    back = pickle.loads(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
    assert back.calls.equals(batch.calls) and back.calls.schema.equals(batch.calls.schema, check_metadata=True)
    assert (back.links is None) == (batch.links is None)
    if batch.links is not None:
        assert back.links.equals(batch.links)
    for name in ("source", "quarantined", "spans_seen", "non_llm_skipped", "conventions", "size", "batch_id"):
        assert getattr(back, name) == getattr(batch, name), name


def test_inserts_store_the_rows_and_count_duplicates(tmp_path: Path) -> None:
    con = open_db(tmp_path / "load.duckdb")
    first = _batch(30, links=True, bad=True)
    first.calls = first.calls.filter(pc.invert(pc.is_null(first.calls.column("request_model"))))
    (counts,) = store_batches(con, [first])
    stored = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    assert counts.calls_stored == stored == first.calls.num_rows - counts.merged
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM span_links").fetchone()[0] == 3
    again = Batch("otlp/http", first.calls, [], first.calls.num_rows, links=first.links)
    (repeat,) = store_batches(con, [again])  # every span stored before: the key-conflict path
    assert repeat.calls_stored == 0 and repeat.duplicates == first.calls.num_rows
    assert con.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == stored
    con.close()


def _unseen_reference(columns: list[str], known: set[tuple], calls: pa.Table) -> tuple[list[tuple], object, object]:
    """NewSeries._unseen before its known-series shortcut (api/services/new_series.py at main d39b2d0)."""
    rows = calls.select([*columns, "start_time"]).group_by(columns)
    rows = rows.aggregate([("start_time", "min"), ("start_time", "max")]).to_pylist()
    fresh = [r for r in rows if tuple(r[c] for c in columns) not in known]
    if not fresh:
        return [], None, None
    lo = min(r["start_time_min"] for r in fresh)
    hi = max(r["start_time_max"] for r in fresh)
    return [tuple(r[c] for c in columns) for r in fresh], lo, hi


@pytest.mark.parametrize("seed", range(3))
def test_new_series_shortcut_finds_the_same_series(seed: int) -> None:
    from spanprism.api.services.new_series import NewSeries

    rng = random.Random(seed)
    series = NewSeries()
    for _ in range(20):
        calls = _calls(rng, rng.randrange(1, 30), "s")
        keys = set(zip(*(calls.column(c).to_pylist() for c in series.columns), strict=True))
        series.known = {k for k in keys if rng.random() < 0.8}
        got, lo, hi = series._unseen(calls)
        want, want_lo, want_hi = _unseen_reference(series.columns, series.known, calls)
        assert sorted(got, key=repr) == sorted(want, key=repr) and (lo, hi) == (want_lo, want_hi)
