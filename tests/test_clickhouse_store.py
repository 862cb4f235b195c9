"""The ClickHouse store (chDB over loopback HTTP, the real clickhouse-connect client) against the DuckDB default.

One simulated export (2.5 days, 3 series, injected causes) goes through ``spanprism ingest`` + ``attribute`` twice:
once into a DuckDB file alone, once with ``SPANPRISM_CLICKHOUSE_URL`` set. The stored calls, the rollups (to
floating-point noise), the route mix, the series and the regressions with their labels must be the same; a second
ingest of the same export must change nothing in ClickHouse.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from support.chains import chain_sides
from support.fold_spans import otlp_line

from spanprism.api.cli import main
from spanprism.api.storage.connect import open_db
from spanprism.attribution.simulator.shifts import SeriesSpec, generate_calls
from spanprism.attribution.store import panels, series_list
from spanprism.attribution.store.rollups import refresh_rollups
from spanprism.ingest.load import store_batches
from spanprism.ingest.pipeline import ingest_paths
from spanprism.ingest.records import Batch
from spanprism.models import clickhouse
from spanprism.models.schema import LLM_CALLS_SCHEMA

pytestmark = [pytest.mark.clickhouse, pytest.mark.slow]

_SIM = ["--seed", "31", "--days", "2.5", "--series", "3", "--rate-min", "0.1", "--rate-max", "0.2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clickhouse_server) -> dict[str, object]:
    base = tmp_path_factory.mktemp("ch-world")
    sim = base / "sim"
    assert main(["--db", str(base / "duck.duckdb"), "simulate", "--out", str(sim), *_SIM]) == 0
    assert main(["--db", str(base / "duck.duckdb"), "ingest", str(sim)]) == 0
    assert main(["--db", str(base / "duck.duckdb"), "attribute"]) == 0
    url = clickhouse_server.new_database()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPANPRISM_CLICKHOUSE_URL", url)
        assert main(["--db", str(base / "ch.duckdb"), "ingest", str(sim)]) == 0
        store = clickhouse.connect(url)
        raw_after_first = store.rows("SELECT count() FROM llm_calls")[0][0]
        assert main(["--db", str(base / "ch.duckdb"), "ingest", str(sim)]) == 0
        raw_after_second = store.rows("SELECT count() FROM llm_calls")[0][0]
        assert main(["--db", str(base / "ch.duckdb"), "attribute"]) == 0
    yield {"duck": base / "duck.duckdb", "ch": base / "ch.duckdb", "store": store,
           "raw": (raw_after_first, raw_after_second)}  # fmt: skip
    store.close()


def _rows(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def _same_rows(left: list[tuple], right: list[tuple]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert all(_close(x, y) for x, y in zip(a, b, strict=True)), (a, b)


def test_the_same_calls_are_stored(world):
    columns = [n for n in LLM_CALLS_SCHEMA.names if n != "ingest_batch"]
    duck = _rows(world["duck"], f"SELECT {', '.join(columns)} FROM llm_calls ORDER BY trace_id, span_id")
    table = (
        world["store"]
        .query_arrow(f"SELECT {', '.join(columns)} FROM llm_calls FINAL ORDER BY trace_id, span_id")
        .cast(pa.schema([LLM_CALLS_SCHEMA.field(c) for c in columns]))
    )
    ch = [tuple(r.values()) for r in table.to_pylist()]
    assert len(duck) > 50_000
    _same_rows(duck, ch)


def test_reingest_changes_nothing(world):
    first, second = world["raw"]
    assert first == second  # not even an unmerged part: duplicates are found and not sent
    final = world["store"].rows("SELECT count() FROM llm_calls FINAL")[0][0]
    assert final == _rows(world["duck"], "SELECT count(*) FROM llm_calls")[0][0]


def test_rollups_are_the_same(world):
    sql = "SELECT * FROM series_rollups ORDER BY series_key, grain_s, bucket_start"
    duck, ch = _rows(world["duck"], sql), _rows(world["ch"], sql)
    assert len(duck) > 1000
    _same_rows(duck, ch)
    for sql in ("SELECT * FROM rollup_dimensions ORDER BY ALL", "SELECT * FROM series ORDER BY series_key"):
        assert _rows(world["duck"], sql) == _rows(world["ch"], sql)


def test_regressions_and_labels_are_the_same(world):
    sql = ("SELECT r.id, r.series_key, r.metric, r.start_time, a.label, a.reason FROM regressions r"
           " LEFT JOIN regression_attributions a ON a.regression_id = r.id ORDER BY r.id")  # fmt: skip
    duck = _rows(world["duck"], sql)
    assert len(duck) >= 2 and all(row[4] for row in duck)
    assert _rows(world["ch"], sql) == duck


def test_reads_go_to_clickhouse(world):
    """The ClickHouse-side DuckDB file holds no calls: every read of them went to ClickHouse."""
    assert _rows(world["ch"], "SELECT count(*) FROM llm_calls")[0][0] == 0
    assert _rows(world["ch"], "SELECT count(*) FROM ingest_batches")[0][0] > 0
    start = world["store"].rows("SELECT min(start_time) FROM llm_calls FINAL")[0][0]
    assert start.replace(tzinfo=UTC) >= datetime(2026, 9, 1, tzinfo=UTC)


def test_panel_queries_over_calls_run_in_clickhouse(world):
    """A quantile panel at a step no rollup grain has is aggregated from the calls: the same points either way."""
    key = _rows(world["duck"], "SELECT series_key FROM series ORDER BY series_key LIMIT 1")[0][0]
    since, until = datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    points = {}
    for name in ("duck", "ch"):
        con = duckdb.connect(str(world[name]), read_only=True)
        previous = clickhouse.bind(world["store"] if name == "ch" else None)
        try:
            series = series_list.get_series(con, key)
            points[name] = [panels.metric_points(con, series, metric, step_s=900, since=since, until=until,
                                                 params=None) for metric in ("e2e_p95_ms", "ttft_p50_ms")]  # fmt: skip
        finally:
            clickhouse.bind(previous)
            con.close()
    assert len(points["duck"][0]) > 100
    for duck, ch in zip(points["duck"], points["ch"], strict=True):
        _same_rows([tuple(p.values()) for p in duck], [tuple(p.values()) for p in ch])


def test_incremental_refresh_with_late_data_matches_duckdb(clickhouse_url, tmp_path):
    """Batches arriving out of time order, refreshed in between: only touched windows are recomputed, and the
    result is the rollups of all calls, on both engines."""
    specs = [SeriesSpec(service=f"svc{i}", rate=0.05, streaming=0.6) for i in range(3)]
    calls = generate_calls(specs, days=2, seed=5).sort_by("start_time")
    day2, day1 = calls.slice(calls.num_rows // 2), calls.slice(0, calls.num_rows // 2)
    late = day1.filter(pc.less(pa.array(range(day1.num_rows)), day1.num_rows // 3))
    units = [day2, day1.slice(day1.num_rows // 3), late]
    store = clickhouse.connect(clickhouse_url)
    results = {}
    for name, bound in (("duck", None), ("ch", store)):
        con = open_db(tmp_path / f"{name}.duckdb")
        previous = clickhouse.bind(bound)
        try:
            for i, unit in enumerate(units):
                store_batches(con, [Batch(source=f"unit{i}", calls=unit, quarantined=[], spans_seen=unit.num_rows)])
                refresh_rollups(con)
            results[name] = con.execute("SELECT * FROM series_rollups ORDER BY ALL").fetchall()
            assert refresh_rollups(con).windows == []  # nothing pending: a no-op
        finally:
            clickhouse.bind(previous)
            con.close()
    store.close()
    assert len(results["duck"]) > 500
    _same_rows(results["duck"], results["ch"])


@pytest.mark.parametrize("order", [("outer", "links", "sdk"), ("sdk", "outer", "links")], ids="-".join)
def test_chains_through_non_llm_spans_fold_on_clickhouse(order, clickhouse_url, tmp_path):
    """tests/test_fold_chains.py on the ClickHouse path: the OpenInference spans, the non-LLM spans between them and
    the SDK spans, as three files in two orders (the links last: they alone join two stored calls), then all again.
    ClickHouse holds what DuckDB holds after ingesting everything at once: one row per call, the same members."""
    outer, links, sdk = chain_sides()
    files = {}
    for name, spans in (("outer", outer), ("links", links), ("sdk", sdk), ("all", [*sdk, *links, *outer])):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_bytes(b"".join(otlp_line(s) + b"\n" for s in spans))
    con = open_db(tmp_path / "duck.duckdb")
    ingest_paths(con, [files["all"]])
    columns = ", ".join(n for n in LLM_CALLS_SCHEMA.names if n != "ingest_batch")
    member_sql = "SELECT trace_id, span_id, call_trace_id, call_span_id FROM llm_call_spans{} ORDER BY ALL"
    calls_sql = f"SELECT {columns} FROM llm_calls{{}} ORDER BY trace_id, span_id"
    expected = con.execute(calls_sql.format("")).fetchall(), con.execute(member_sql.format("")).fetchall()
    con.close()
    assert len(expected[0]) == 3 and len(expected[1]) == 6

    store = clickhouse.connect(clickhouse_url)
    con = open_db(tmp_path / "ch.duckdb")
    previous = clickhouse.bind(store)
    try:
        first = [ingest_paths(con, [files[name]]) for name in order]
        again = [ingest_paths(con, [files[name]]) for name in order]
        schema = pa.schema([LLM_CALLS_SCHEMA.field(c) for c in columns.split(", ")])
        calls = store.query_arrow(calls_sql.format(" FINAL")).cast(schema).to_pylist()
        members = store.rows(member_sql.format(" FINAL WHERE _deleted = 0"))
        local = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0], con.execute(
            "SELECT count(*) FROM span_links").fetchone()[0]  # fmt: skip
    finally:
        clickhouse.bind(previous)
        con.close()
        store.close()
    assert sum(s.calls_stored for s in first) == 3 and sum(s.merged for s in first) == 3
    assert sum(s.calls_stored for s in again) == 0 and sum(s.merged for s in again) == 0
    _same_rows(expected[0], [tuple(r.values()) for r in calls])
    assert members == expected[1]
    assert local == (0, 4 + 3)  # the calls went to ClickHouse; the links stay in the local file
