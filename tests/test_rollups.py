"""Rollups: exact aggregates on hand-made calls, route mix, series keys, incremental refresh = full rebuild."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spanprism.api.storage.connect import open_db
from spanprism.attribution.simulator.shifts import SeriesSpec, at, generate_calls, insert_calls
from spanprism.attribution.store.rollup_sql import RollupConfig, series_key_sql
from spanprism.attribution.store.rollups import pending_batches, refresh_rollups, refresh_series_rollups
from spanprism.models.schema import conform

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def _calls(n: int, *, start: datetime = T0, batch: str = "b1", service: str = "svc", tenant: str | None = None,
           **columns) -> pa.Table:  # fmt: skip
    base = {
        "trace_id": [f"{batch}-{service}-{i}".ljust(32, "0")[:32] for i in range(n)],
        "span_id": [f"{i:016x}" for i in range(n)],
        "service": [service] * n, "tenant": [tenant] * n, "provider": ["openai"] * n,
        "request_model": ["gpt-4o"] * n, "operation": ["chat"] * n,
        "start_time": [start + timedelta(seconds=i) for i in range(n)],
        "status": ["ok"] * n, "ingest_batch": [batch] * n,
    }  # fmt: skip
    base.update(columns)
    return conform(pa.table(base))


@pytest.fixture
def con(tmp_path):
    c = open_db(tmp_path / "r.duckdb")
    yield c
    c.close()


def _row(con, grain: int = 300, service: str = "svc") -> dict:
    cur = con.execute(
        "SELECT r.* FROM series_rollups r JOIN series s USING (series_key) WHERE grain_s = ? AND s.service = ? "
        "ORDER BY bucket_start LIMIT 1",
        [grain, service],
    )
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchall()[0], strict=True))


def test_latency_quantiles_errors_and_streaming(con):
    durations = [float(d) for d in range(100, 1100, 10)]  # 100 calls, 100..1090 ms
    ttft = [d / 4 if i % 2 == 0 else None for i, d in enumerate(durations)]  # half streaming
    status = ["ok"] * 98 + ["error", "error"]
    insert_calls(con, _calls(100, duration_ms=durations, ttft_ms=ttft, itl_ms=[20.0] * 100, status=status))
    refresh_rollups(con)
    row = _row(con)
    ok = np.array(durations[:98])
    assert (row["n_calls"], row["n_errors"], row["error_rate"]) == (100, 2, 0.02)
    assert row["e2e_p50_ms"] == pytest.approx(np.percentile(ok, 50))
    assert row["e2e_p95_ms"] == pytest.approx(np.percentile(ok, 95))
    assert row["e2e_p99_ms"] == pytest.approx(np.percentile(ok, 99))
    assert row["e2e_gmean_ms"] == pytest.approx(np.exp(np.log(ok).mean()))
    streamed = np.array([t for t, s in zip(ttft, status, strict=True) if t is not None and s == "ok"])
    assert row["n_ttft"] == len(streamed) == 49
    assert row["ttft_p95_ms"] == pytest.approx(np.percentile(streamed, 95))
    assert row["itl_p50_ms"] == pytest.approx(20.0)
    assert row["queue_p95_ms"] is None and row["n_queue"] == 0


def test_tokens_and_cache(con):
    inp = [2000, 2000, 500, 4000, 3000]
    cache = [1000, 0, 0, 3000, None]  # the last call does not report cache at all
    insert_calls(con, _calls(5, input_tokens=inp, cache_read_tokens=cache, output_tokens=[10, 20, 30, 40, 50],
                             uncached_input_tokens=[1000, 2000, 500, 1000, None]))  # fmt: skip
    refresh_rollups(con)
    row = _row(con)
    assert row["cache_read_ratio"] == pytest.approx(4000 / 8500)  # only calls that report cache
    assert row["n_cache_reported"] == 4 and row["n_cache_eligible"] == 3  # ≥ 1024 input tokens and reported
    assert row["cache_hit_rate"] == pytest.approx(2 / 3)
    assert row["input_tokens_p50"] == pytest.approx(2000)
    assert row["output_tokens_p95"] == pytest.approx(np.percentile([10, 20, 30, 40, 50], 95))


def test_route_mix_counts(con):
    regions = ["eastus"] * 6 + ["westus"] * 3 + [None]
    insert_calls(con, _calls(10, region=regions, server_address=["a.example.com"] * 10, duration_ms=[1.0] * 10))
    refresh_rollups(con)
    mix = dict(con.execute(
        "SELECT value, n_calls FROM rollup_dimensions WHERE dimension = 'region'").fetchall())  # fmt: skip
    assert mix == {"eastus": 6, "westus": 3, "": 1}
    per_dim = con.execute("SELECT dimension, sum(n_calls) FROM rollup_dimensions GROUP BY 1").fetchall()
    assert len(per_dim) == 5 and all(total == 10 for _, total in per_dim)


def test_grains_and_bucket_edges(con):
    # 12 calls a minute apart from 10:55: two 5-minute buckets on each side of 11:00, one hourly bucket each.
    insert_calls(con, _calls(12, start=T0 + timedelta(minutes=55), duration_ms=[5.0] * 12,
                             start_time=[T0 + timedelta(minutes=55 + i) for i in range(12)]))  # fmt: skip
    refresh_rollups(con)
    got = con.execute("SELECT grain_s, hour(bucket_start AT TIME ZONE 'UTC'), minute(bucket_start AT TIME ZONE 'UTC'),"
                      " n_calls FROM series_rollups ORDER BY 1, 2, 3").fetchall()  # fmt: skip
    assert got == [(300, 10, 55, 5), (300, 11, 0, 5), (300, 11, 5, 2), (3600, 10, 0, 5), (3600, 11, 0, 7)]


def test_series_key_is_stable_and_tenant_configurable(con):
    insert_calls(con, _calls(4, tenant="acme", duration_ms=[1.0] * 4))
    insert_calls(con, _calls(4, tenant="globex", batch="b2", duration_ms=[1.0] * 4))
    refresh_rollups(con)
    assert con.execute("SELECT count(*) FROM series").fetchall()[0] == (1,)
    key = con.execute(f"SELECT {series_key_sql(['service', 'provider', 'request_model', 'operation'])} "
                      "FROM llm_calls LIMIT 1").fetchall()[0][0]  # fmt: skip
    assert con.execute("SELECT series_key, tenant FROM series").fetchall()[0] == (key, None)
    con.execute("DELETE FROM series; DELETE FROM series_rollups; DELETE FROM rollup_batches")
    with_tenant = RollupConfig(series_columns=("service", "provider", "request_model", "operation", "tenant"))
    refresh_rollups(con, config=with_tenant)
    assert sorted(r[0] for r in con.execute("SELECT tenant FROM series").fetchall()) == ["acme", "globex"]
    with pytest.raises(ValueError):
        RollupConfig(series_columns=("service; DROP TABLE llm_calls",))


def _snapshot(con) -> list[tuple]:
    return con.execute("SELECT * FROM series_rollups ORDER BY series_key, grain_s, bucket_start").fetchall()


def test_incremental_refresh_equals_full_rebuild(tmp_path):
    specs = [SeriesSpec(service="a", rate=0.05), SeriesSpec(service="b", rate=0.02, streaming=0.0)]
    calls = generate_calls(specs, days=2, seed=3)
    starts = calls.column("start_time").to_numpy()
    early = calls.filter(pa.array(starts < np.datetime64(at(1, 6).replace(tzinfo=None))))
    late = calls.filter(pa.array(starts >= np.datetime64(at(1, 6).replace(tzinfo=None))))
    # Late data: a new batch whose calls land in old buckets.
    late = late.set_column(late.schema.get_field_index("ingest_batch"), "ingest_batch",
                           pa.array(["late"] * late.num_rows))  # fmt: skip
    inc = open_db(tmp_path / "inc.duckdb")
    insert_calls(inc, early)
    first = refresh_rollups(inc)
    assert first.rows_written > 0 and pending_batches(inc) == []
    assert refresh_rollups(inc).rows_written == 0  # nothing new: nothing recomputed
    insert_calls(inc, late)
    second = refresh_rollups(inc)
    assert second.batches == 1
    full = open_db(tmp_path / "full.duckdb")
    insert_calls(full, calls)
    refresh_rollups(full)
    assert _snapshot(inc) == _snapshot(full)
    dims = "SELECT * FROM rollup_dimensions ORDER BY ALL"
    assert inc.execute(dims).fetchall() == full.execute(dims).fetchall()
    # An explicit range rebuild changes nothing either.
    refresh_rollups(inc, at(0, 3), at(1, 12))
    assert _snapshot(inc) == _snapshot(full)
    inc.close()
    full.close()


def _rounded(rows: list[tuple]) -> list[tuple]:
    # The calls went in in another order than the full rebuild's: sums (geometric means) differ in the last bits.
    return [tuple(float(f"{v:.10g}") if isinstance(v, float) else v for v in row) for row in rows]


def test_a_keyed_refresh_computes_only_those_series_and_picks_up_late_batches(tmp_path):
    """A worker's per-shard refresh: the rollups of the given series only, equal to a full rebuild's rows of those
    series, and a batch written later with calls in old buckets is picked up through ``written_since``."""
    specs = [SeriesSpec(service=s, rate=0.03) for s in ("a", "b", "c")]
    calls = generate_calls(specs, days=2, seed=5)
    starts = calls.column("start_time").to_numpy()
    old = pa.array(starts < np.datetime64(at(1, 0).replace(tzinfo=None)))
    # The late batch: calls of day 0 (old buckets) written after the first refresh.
    late_mask = pa.array([bool(x) and i % 7 == 0 for i, x in enumerate(old.to_pylist())])
    late = calls.filter(late_mask)
    late = late.set_column(late.schema.get_field_index("ingest_batch"), "ingest_batch", pa.array(["late"] * len(late)))
    early = calls.filter(pc.invert(late_mask))
    full = open_db(tmp_path / "full.duckdb")
    insert_calls(full, calls)
    refresh_rollups(full)
    keys = sorted(r[0] for r in full.execute("SELECT series_key FROM series WHERE service IN ('a', 'c')").fetchall())
    want = _rounded([row for row in _snapshot(full) if row[0] in keys])

    shard = open_db(tmp_path / "shard.duckdb")
    insert_calls(shard, early)
    first = refresh_series_rollups(shard, keys, None)
    assert first.series == 2 and {r[0] for r in _snapshot(shard)} == set(keys)  # series b is not computed
    assert _rounded(_snapshot(shard)) != want  # the late calls are missing yet
    refreshed_at = datetime.now(UTC)
    insert_calls(shard, late)
    shard.execute("INSERT INTO ingest_batches (id, source, started_at) VALUES ('late', 'test', ?)",
                  [refreshed_at + timedelta(seconds=1)])  # fmt: skip
    # From the last day on only: the late batch's old buckets come back through written_since alone.
    refresh_series_rollups(shard, keys, at(1, 12), written_since=refreshed_at)
    assert _rounded(_snapshot(shard)) == want
    assert pending_batches(shard)  # rollup_batches is a whole-table record: a shard's refresh does not write it
    shard.close()
    full.close()
