"""``source`` mode: spans in the Collector exporter's ``otel_traces`` table become the same ``llm_calls``.

chDB (ClickHouse 26.x) behind a loopback HTTP endpoint accepts the exporter's DDL unchanged; the spans are put in it
in the exporter's column layout (every attribute value a string, events as Nested arrays, duration in ns), read back
by the product and normalized by the same normalizer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pyarrow as pa
import pytest
from conftest import ADMIN_KEY, live_server
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from support.chains import chain_sides
from support.fold_spans import otlp_line
from support.normalize_fixtures import FIXTURES, load_spans
from support.otlp_spans import genai_spans

from spanprism.api.cli import main
from spanprism.api.storage.connect import open_db
from spanprism.ingest.normalize import normalize
from spanprism.ingest.otel_traces import (
    Part,
    _save_watermark,
    exporter_rows,
    follow,
    otel_traces_ddl,
    read_slice,
    span_records,
    spans_of_files,
    watermark,
)
from spanprism.ingest.pipeline import ingest_paths
from spanprism.models import clickhouse
from spanprism.models.schema import LLM_CALLS_SCHEMA

pytestmark = pytest.mark.clickhouse

CONVENTIONS = sorted(p.stem for p in FIXTURES.glob("*.json") if p.stem != "bad")


@pytest.fixture
def store(clickhouse_url):
    s = clickhouse.connect(clickhouse_url)
    s.command(otel_traces_ddl())
    yield s
    s.close()


def _sorted(table: pa.Table) -> list[dict]:
    return sorted(table.drop_columns(["ingest_batch"]).to_pylist(), key=lambda r: (r["trace_id"], r["span_id"]))


@pytest.mark.parametrize("name", CONVENTIONS)
def test_every_convention_normalizes_the_same_from_otel_traces(store, name):
    spans = load_spans(name)
    direct = normalize(spans, tenant_attribute="tenant.id")
    store.insert("otel_traces", exporter_rows(spans))
    rows = read_slice(store, "otel_traces", 0, 2**62)
    again = normalize(span_records(rows, "clickhouse:otel_traces"), tenant_attribute="tenant.id")
    assert direct.table.num_rows > 0
    assert _sorted(again.table) == _sorted(direct.table)
    assert [q.reason for q in again.quarantined] == [q.reason for q in direct.quarantined]
    assert again.conventions == direct.conventions


_SIM = ["--seed", "7", "--days", "0.5", "--series", "2", "--rate-min", "0.1", "--rate-max", "0.2"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> dict[str, object]:
    """A simulated export, and its calls as the file ingest stores them in a DuckDB file of its own."""
    base = tmp_path_factory.mktemp("source-export")
    sim = base / "sim"
    assert main(["--db", str(base / "files.duckdb"), "simulate", "--out", str(sim), *_SIM]) == 0
    assert main(["--db", str(base / "files.duckdb"), "ingest", str(sim)]) == 0
    con = duckdb.connect(str(base / "files.duckdb"), read_only=True)
    calls = con.sql(f"SELECT {_COLS} FROM llm_calls ORDER BY trace_id, span_id").fetchall()
    con.close()
    return {"sim": sim, "calls": calls, "spans": spans_of_files([str(sim)])}


_COLS = ", ".join(n for n in LLM_CALLS_SCHEMA.names if n != "ingest_batch")


def _stored(store: clickhouse.ClickHouseStore) -> list[tuple]:
    table = store.query_arrow(f"SELECT {_COLS} FROM llm_calls FINAL ORDER BY trace_id, span_id")
    schema = pa.schema([f for f in LLM_CALLS_SCHEMA if f.name != "ingest_batch"])
    return [tuple(r.values()) for r in table.cast(schema).to_pylist()]


def _fill(url: str, spans) -> clickhouse.ClickHouseStore:
    store = clickhouse.connect(url)
    store.command(otel_traces_ddl())
    for start in range(0, len(spans), 20_000):
        store.insert("otel_traces", exporter_rows(spans[start : start + 20_000]))
    return store


def test_otel_traces_gives_the_same_calls_as_the_otlp_files(export, clickhouse_url, tmp_path, monkeypatch):
    store = _fill(clickhouse_url, export["spans"])
    monkeypatch.setenv("SPANPRISM_CLICKHOUSE_URL", clickhouse_url)
    assert main(["--db", str(tmp_path / "b.duckdb"), "source", "--slice-s", "1800"]) == 0
    assert len(export["calls"]) > 1000
    assert _stored(store) == export["calls"]
    # A second pass re-reads the late window and stores nothing new.
    assert main(["--db", str(tmp_path / "b.duckdb"), "source", "--json"]) == 0
    assert _stored(store) == export["calls"]
    assert store.rows("SELECT count() FROM llm_calls WHERE _deleted = 0")[0][0] == len(export["calls"])


def test_a_stopped_pass_goes_on_where_it_stopped(export, clickhouse_url, tmp_path):
    store = _fill(clickhouse_url, export["spans"])
    con = open_db(tmp_path / "c.duckdb")
    previous = clickhouse.bind(store)
    try:
        first = follow(con, store, slice_s=600, max_slices=3, late_s=300)
        assert first.slices == 3 and first.watermark_ns is not None
        assert 0 < len(_stored(store)) < len(export["calls"])
        rest = follow(con, store, slice_s=3600, late_s=300)  # longer slices: the watermark is a time
        assert rest.duplicates > 0  # the late window was read again
    finally:
        clickhouse.bind(previous)
        con.close()
    assert _stored(store) == export["calls"]
    assert store.rows("SELECT count() FROM llm_calls WHERE _deleted = 0")[0][0] == len(export["calls"])


@pytest.mark.parametrize("links_later", [False, True], ids=["together", "links-a-pass-later"])
def test_source_follows_chains_through_non_llm_spans(links_later, clickhouse_url, tmp_path):
    """OpenInference spans and SDK spans joined only through non-LLM spans (an app step, an HTTP client span) in
    ``otel_traces`` fold as the file ingest folds them: 3 calls of 2 spans each. With the non-LLM spans exported a
    pass later (inside the late window), the second pass joins the calls the first one stored apart."""
    outer, links, sdk = chain_sides()
    both = tmp_path / "all.jsonl"
    both.write_bytes(b"".join(otlp_line(s) + b"\n" for s in [*outer, *links, *sdk]))
    con = open_db(tmp_path / "files.duckdb")
    ingest_paths(con, [both])
    expected = con.sql(f"SELECT {_COLS} FROM llm_calls ORDER BY trace_id, span_id").fetchall()
    members_sql = "SELECT trace_id, span_id, call_trace_id, call_span_id FROM llm_call_spans{} ORDER BY ALL"
    expected_members = con.sql(members_sql.format("")).fetchall()
    con.close()
    assert len(expected) == 3 and len(expected_members) == 6

    store = clickhouse.connect(clickhouse_url)
    store.command(otel_traces_ddl())
    store.insert("otel_traces", exporter_rows([*outer, *sdk] if links_later else [*outer, *links, *sdk]))
    con = open_db(tmp_path / "source.duckdb")
    previous = clickhouse.bind(store)
    try:
        first = follow(con, store, slice_s=60)
        if links_later:
            assert first.calls_stored > 3  # without the links, timing alone cannot join every pair
            store.insert("otel_traces", exporter_rows(links))
            follow(con, store, slice_s=60)
        stored = _stored(store)
        members = store.rows(members_sql.format(" FINAL WHERE _deleted = 0"))
    finally:
        clickhouse.bind(previous)
        con.close()
        store.close()
    assert stored == expected
    assert members == expected_members


def test_a_killed_source_loses_and_duplicates_nothing(export, clickhouse_url, tmp_path):
    """SIGKILL mid-pass (after some slices are stored and marked): the next pass finishes without loss or dups."""
    store = _fill(clickhouse_url, export["spans"])
    env = {**os.environ, "SPANPRISM_CLICKHOUSE_URL": clickhouse_url}
    cmd = [sys.executable, "-m", "spanprism.api.cli", "--db", str(tmp_path / "k.duckdb"), "source", "--slice-s", "120"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            marks = store.rows("SELECT count() FROM system.tables WHERE name = 'spanprism_source_watermarks'"
                               " AND database = currentDatabase()")[0][0]  # fmt: skip
            if marks and store.rows("SELECT count() FROM spanprism_source_watermarks")[0][0] >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the pass ended before it could be killed: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    partial = len(_stored(store))
    assert 0 < partial < len(export["calls"])
    env_run = {"SPANPRISM_CLICKHOUSE_URL": clickhouse_url}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env_run.items():
            mp.setenv(k, v)
        # The finishing pass reads hour slices: the watermark is a time, not a slice count, so the pass goes on from
        # where the killed one stopped whatever its slice length (and 120-s slices over half a day cost minutes here).
        assert main(["--db", str(tmp_path / "k.duckdb"), "source", "--slice-s", "3600"]) == 0
    assert _stored(store) == export["calls"]
    assert store.rows("SELECT count() FROM llm_calls WHERE _deleted = 0")[0][0] == len(export["calls"])


def test_followers_split_by_trace_give_the_calls_of_one(export, clickhouse_url, tmp_path, monkeypatch, capsys):
    """Three followers (each its own DuckDB file, as on three hosts) each read a third of the traces: together the
    calls of one follower, none twice. Re-split into two, each new part starts where the three stored everything."""
    store = _fill(clickhouse_url, export["spans"])
    monkeypatch.setenv("SPANPRISM_CLICKHOUSE_URL", clickhouse_url)
    stored = []
    for i in range(3):
        assert main(["--db", str(tmp_path / f"p{i}.duckdb"), "source", "--slice-s", "3600", "--part", f"{i}/3"]) == 0
        stored.append(len(_stored(store)))
    assert 0 < stored[0] < stored[1] < stored[2]  # each part adds its own share of the calls
    assert _stored(store) == export["calls"]
    assert store.rows("SELECT count() FROM llm_calls WHERE _deleted = 0")[0][0] == len(export["calls"])
    thirds = [watermark(store, "otel_traces", Part(i, 3)) for i in range(3)]
    assert watermark(store, "otel_traces", Part(1, 2)) == min(thirds)  # the 3-way split covers up to its slowest
    capsys.readouterr()
    for i in range(2):
        assert main(["--db", str(tmp_path / f"q{i}.duckdb"), "source", "--json", "--part", f"{i}/2"]) == 0
    out, runs, at = capsys.readouterr().out, [], 0
    while (at := out.find("{", at)) >= 0:  # the JSON summaries (pretty-printed), one per pass
        run, at = json.JSONDecoder().raw_decode(out, at)
        runs.append(run)
    assert [r["part"] for r in runs] == ["0/2", "1/2"] and all(r["calls_stored"] == 0 for r in runs)
    assert sum(r["spans_read"] for r in runs) < len(export["spans"]) / 4  # the late window, not the whole table
    assert store.rows("SELECT count() FROM llm_calls WHERE _deleted = 0")[0][0] == len(export["calls"])
    assert main(["--db", str(tmp_path / "bad.duckdb"), "source", "--part", "3/3"]) == 2
    assert "expected I/N" in capsys.readouterr().err


def test_a_new_split_starts_only_where_a_complete_split_stored_everything(clickhouse_url):
    store = clickhouse.connect(clickhouse_url)
    assert watermark(store, "t", Part(0, 2)) is None  # nothing stored: from the table's first span
    _save_watermark(store, "t#0/4", 500)  # a 4-way split whose parts 1-3 never ran covers nothing
    _save_watermark(store, "t#1/4", 900)
    assert watermark(store, "t", Part(0, 2)) is None
    _save_watermark(store, "t", 300)  # one follower stored everything before 300
    _save_watermark(store, "t#0/3", 700)
    _save_watermark(store, "t#1/3", 650)
    _save_watermark(store, "t#2/3", 800)
    _save_watermark(store, "other#0/1", 5000)  # another table's marks do not count
    assert watermark(store, "t", Part(0, 2)) == 650  # the best complete split: the 3-way one, up to its slowest
    assert watermark(store, "t", Part(1, 4)) == 900 and watermark(store, "t") == 300  # own marks win
    assert watermark(store, "t", Part(2, 4)) == 650


def _wait_for(check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_serve_receives_into_clickhouse_and_follows_otel_traces(clickhouse_url, tmp_path):
    """``serve`` with ClickHouse: the OTLP receiver's calls land there, and the follower reads ``otel_traces``."""
    store = _fill(clickhouse_url, [])
    followed = load_spans("openinference")
    expected = normalize(followed).table.num_rows
    with live_server(tmp_path, clickhouse_url=clickhouse_url, clickhouse_source_every_s=0.2) as live:
        exporter = OTLPSpanExporter(endpoint=f"{live.url}/v1/traces", headers={"authorization": f"Bearer {ADMIN_KEY}"},
                                    timeout=10)  # fmt: skip
        try:
            assert exporter.export(genai_spans(7, seed=3, model="m-ch")) == SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        count = "SELECT count() FROM llm_calls FINAL WHERE request_model = {m}"
        _wait_for(lambda: store.rows(count.format(m="'m-ch'"))[0][0] == 7)
        store.insert("otel_traces", exporter_rows(followed))
        _wait_for(lambda: store.rows("SELECT count() FROM llm_calls FINAL")[0][0] == 7 + expected)

        def local(sql: str) -> list[tuple]:
            with live.app.state.db.read() as cur:
                return cur.execute(sql).fetchall()

        # The calls land in ClickHouse first, then the follower's batch row in the local file: wait for both.
        _wait_for(lambda: ("clickhouse:otel_traces",) in local("SELECT DISTINCT source FROM ingest_batches"))
        assert local("SELECT count(*) FROM llm_calls")[0][0] == 0  # nothing in the file
        # New series are listed from ClickHouse's calls ahead of the next rollup pass (the receiver's own series).
        _wait_for(lambda: local("SELECT count(*) FROM series WHERE request_model = 'm-ch'")[0][0] >= 1)
