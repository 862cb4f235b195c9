"""Attribution passes and their ``job_runs`` records on a real DuckDB file: windows, skips, failures, restarts.

Data: two small seeded series (simulator/shifts.py) with one injected TTFT regression, stored through the real
ingest loader in batches (so ``ingest_batches``/``rollup_batches`` drive the incremental windows). A tiny
classifier fitted on seeded random features keeps these tests about the jobs, not about classifier quality.
"""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from spanprism.api.cli import main
from spanprism.api.storage.connect import open_db
from spanprism.attribution.classifier.model import FEATURE_NAMES, fit_attributor
from spanprism.attribution.passes import runs
from spanprism.attribution.simulator.shifts import SeriesSpec, Shift, at, generate_calls
from spanprism.attribution.store.records import list_regressions
from spanprism.attribution.vocabulary import LABELS
from spanprism.ingest.load import store_batch
from spanprism.ingest.records import Batch

SPECS = [SeriesSpec(service="checkout", rate=0.05), SeriesSpec(service="search", rate=0.04, ttft_ms=300.0)]
SHIFT = Shift(0, at(3, 8), 5 * 3600, 1.9, "ttft")


@pytest.fixture(scope="module")
def calls() -> pa.Table:
    return generate_calls(SPECS, days=5, shifts=(SHIFT,), seed=11)


def part(calls: pa.Table, lo_day: float, hi_day: float, *, late: bool | None = None) -> pa.Table:
    """Calls starting in [lo_day, hi_day) days after the generator start; ``late`` picks (True) or drops (False)
    every 10th of them — the calls a test holds back and ingests later, as late data."""
    st = calls.column("start_time").to_numpy()
    lo, hi = (np.datetime64(at(d).replace(tzinfo=None)) for d in (lo_day, hi_day))
    idx = np.flatnonzero((st >= lo) & (st < hi))
    if late is not None:
        idx = idx[(np.arange(len(idx)) % 10 == 0) == late]
    return calls.take(pa.array(idx))


def ingest(con, table: pa.Table, source: str) -> None:
    store_batch(con, Batch(source=source, calls=table, quarantined=[], spans_seen=table.num_rows))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    rng = random.Random(7)
    features = [{name: rng.gauss(0.0, 1.0) for name in FEATURE_NAMES} for _ in range(8 * len(LABELS))]
    path = tmp_path_factory.mktemp("clf") / "tiny-classifier.json"
    fit_attributor(features, list(LABELS) * 8, seed=0).save(path)
    return path


@pytest.fixture(scope="module")
def four_days(tmp_path_factory, calls) -> Path:
    """A migrated file holding days 0-4 minus every 10th call of day 2 (held back as late data), in 3 batches."""
    path = tmp_path_factory.mktemp("jobs") / "four_days.duckdb"
    con = open_db(path)
    ingest(con, part(calls, 0, 2), "days-0-1")
    ingest(con, part(calls, 2, 3, late=False), "day-2")
    ingest(con, part(calls, 3, 4), "day-3")
    con.close()
    return path


@pytest.fixture
def con(tmp_path, four_days):
    path = tmp_path / "jobs.duckdb"
    shutil.copy(four_days, path)
    connection = open_db(path)
    yield connection
    connection.close()


def run(con, kind: str, classifier, **kw) -> dict:
    return runs.execute(con, runs.new_run(kind, "cli", since=kw.pop("since", None), until=kw.pop("until", None)),
                        classifier=classifier, **kw)  # fmt: skip


def snapshot(con) -> dict[str, dict]:
    return {r["id"]: r for r in list_regressions(con, detail=True)}


def test_first_incremental_covers_everything_and_an_idle_tick_is_skipped(con, classifier):
    first = run(con, "incremental", classifier)
    assert first["status"] == "succeeded" and first["error"] is None
    span = con.execute("SELECT min(start_time), max(start_time) FROM llm_calls").fetchall()[0]
    assert (first["window_start"], first["window_end"]) == tuple(runs.as_utc(t) for t in span)
    assert first["counts"]["covering"] and first["counts"]["regressions_resolved"] >= 1
    # The injected TTFT shift (checkout, 2026-03-05 08:00-13:00) is found.
    assert any(r["series"]["service"] == "checkout" and "2026-03-05T05" <= r["start"] <= "2026-03-05T09"
               for r in snapshot(con).values())  # fmt: skip
    updated = con.execute("SELECT max(updated_at) FROM regressions").fetchall()
    idle = run(con, "incremental", classifier)
    assert idle["status"] == "skipped" and idle["window_start"] is None and "no new data" in idle["counts"]["reason"]
    # No work: nothing was rewritten, and the stored records are the runs' own.
    assert con.execute("SELECT max(updated_at) FROM regressions").fetchall() == updated
    assert runs.get_run(con, idle["id"]) == idle and runs.get_run(con, first["id"]) == first
    # Idle ticks do not pile up: skipped runs older than SKIPPED_KEPT go when the next one is recorded.
    old = {**idle, "id": "old-idle-tick", "finished_at": idle["finished_at"] - runs.SKIPPED_KEPT - timedelta(hours=1)}
    runs.save_run(con, old)
    again = run(con, "incremental", classifier)
    assert again["status"] == "skipped" and runs.get_run(con, "old-idle-tick") is None
    assert runs.get_run(con, idle["id"]) == idle and runs.get_run(con, first["id"]) == first


def test_incremental_window_starts_at_last_end_minus_overlap_and_reaches_back_for_late_data(con, calls, classifier):
    first = run(con, "incremental", classifier)
    ingest(con, part(calls, 4, 5), "day4")
    window = runs.plan(con, "incremental")
    assert window.since == first["window_end"] - runs.OVERLAP and window.until is None
    assert window.end == runs.as_utc(con.execute("SELECT max(start_time) FROM llm_calls").fetchall()[0][0])
    late = part(calls, 2, 3, late=True)  # the day-2 calls held back, arriving after day 4
    ingest(con, late, "late")
    window = runs.plan(con, "incremental")
    assert window.since == runs.as_utc(late.column("start_time")[0].as_py()) < first["window_end"]
    second = run(con, "incremental", classifier)
    assert second["status"] == "succeeded" and second["window_start"] == window.since
    assert run(con, "incremental", classifier)["status"] == "skipped"


def test_a_failed_pass_is_recorded_and_the_next_pass_catches_its_window_up(tmp_path, con, calls, classifier):
    first = run(con, "incremental", classifier)
    ingest(con, part(calls, 4, 5), "day4")
    failed = run(con, "incremental", tmp_path / "missing-classifier.json")
    assert failed["status"] == "failed" and "missing-classifier.json" in failed["error"]
    assert failed["finished_at"] >= failed["started_at"] and runs.get_run(con, failed["id"])["status"] == "failed"
    caught_up = run(con, "incremental", classifier)
    assert caught_up["status"] == "succeeded" and caught_up["window_start"] == first["window_end"] - runs.OVERLAP
    # Same answer as one pass over the same data in a fresh file.
    fresh = open_db(tmp_path / "fresh.duckdb")
    try:
        for name, table in (("days-0-1", part(calls, 0, 2)), ("day-2", part(calls, 2, 3, late=False)),
                            ("day-3", part(calls, 3, 4)), ("day4", part(calls, 4, 5))):  # fmt: skip
            ingest(fresh, table, name)
        assert run(fresh, "manual", classifier)["status"] == "succeeded"
        assert _comparable(snapshot(fresh)) == _comparable(snapshot(con))
    finally:
        fresh.close()


def _comparable(records: dict[str, dict]) -> dict[str, dict]:
    return {k: {f: r[f] for f in ("series", "start", "end", "status", "metric", "baseline", "observed", "label")}
            for k, r in records.items()}  # fmt: skip


def test_a_run_left_running_by_a_crash_is_marked_interrupted_and_its_window_caught_up(con, calls, classifier):
    done = run(con, "incremental", classifier)
    ingest(con, part(calls, 4, 5), "day4")
    crashed = {**runs.new_run("nightly", "scheduler"), "status": "running", "started_at": datetime.now(UTC)}
    runs.save_run(con, crashed)
    queued = runs.new_run("manual", "api")
    runs.save_run(con, queued)
    assert runs.mark_interrupted(con) == 2
    for record in (crashed, queued):
        stored = runs.get_run(con, record["id"])
        assert stored["status"] == "interrupted" and stored["finished_at"] is not None and stored["error"]
    assert runs.get_run(con, done["id"])["status"] == "succeeded"
    assert runs.mark_interrupted(con) == 0
    nxt = run(con, "incremental", classifier)
    assert nxt["status"] == "succeeded" and nxt["window_start"] == done["window_end"] - runs.OVERLAP


def test_rerunning_a_window_yields_the_same_regressions(con, calls, classifier):
    run(con, "manual", classifier)
    before = snapshot(con)
    assert before
    again = run(con, "manual", classifier)
    assert again["status"] == "succeeded" and snapshot(con) == before
    # A bounded manual pass over the regression's day changes nothing either, and does not count as covering.
    bounded = run(con, "manual", classifier, since=at(3), until=at(4))
    assert (bounded["window_start"], bounded["counts"]["covering"]) == (at(3), False)
    assert snapshot(con) == before
    assert runs.last_covering_success(con)["id"] == again["id"]


def test_nightly_rebuilds_the_lookback_span_and_reaches_back_for_late_data(con, calls, classifier):
    run(con, "incremental", classifier)
    end = runs.as_utc(con.execute("SELECT max(start_time) FROM llm_calls").fetchall()[0][0])
    window = runs.plan(con, "nightly", lookback_days=1)
    assert (window.since, window.end) == (end - timedelta(days=1), end)
    assert runs.plan(con, "nightly", lookback_days=0).since is None  # 0 = all history
    late = part(calls, 2, 3, late=True)
    ingest(con, late, "late")
    assert runs.plan(con, "nightly", lookback_days=1).since == runs.as_utc(late.column("start_time")[0].as_py())
    nightly = run(con, "nightly", classifier, lookback_days=1)
    assert nightly["status"] == "succeeded"
    # The late calls changed the answer; the nightly pass has the answer a full rebuild gives.
    after_nightly = snapshot(con)
    assert run(con, "manual", classifier)["status"] == "succeeded"
    assert _comparable(snapshot(con)) == _comparable(after_nightly)


def test_an_empty_database_skips(tmp_path, classifier):
    con = open_db(tmp_path / "empty.duckdb")
    try:
        assert [run(con, k, classifier)["status"] for k in runs.KINDS] == ["skipped"] * 3
        page, total = runs.list_runs(con, status="skipped", limit=2)
        assert total == 3 and len(page) == 2 and page[0]["queued_at"] >= page[1]["queued_at"]
        assert runs.list_runs(con, kind="nightly")[1] == 1
    finally:
        con.close()


def test_new_run_rejects_bad_input():
    with pytest.raises(ValueError):
        runs.new_run("weekly", "cli")
    with pytest.raises(ValueError):
        runs.new_run("manual", "cli", since=at(2), until=at(1))


def test_cli_attribute_records_a_manual_run_and_jobs_lists_it(tmp_path, four_days, classifier, capsys, monkeypatch):
    db = tmp_path / "cli.duckdb"
    shutil.copy(four_days, db)
    monkeypatch.setenv("SPANPRISM_CLASSIFIER", str(classifier))
    assert main(["--db", str(db), "attribute", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["regressions_resolved"] >= 1 and result["run"]["trigger"] == "cli"
    assert main(["--db", str(db), "jobs", "run", "incremental", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["status"] == "skipped"
    assert main(["--db", str(db), "jobs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["status"]) for r in listed["data"]] == [("incremental", "skipped"), ("manual", "succeeded")]
    assert listed["data"][1]["id"] == result["run"]["id"] and listed["count"] == 2
    assert main(["--db", str(db), "jobs"]) == 0
    assert "manual" in capsys.readouterr().out
    monkeypatch.setenv("SPANPRISM_CLASSIFIER", str(tmp_path / "nope.json"))
    assert main(["--db", str(db), "jobs", "run", "nightly"]) == 1  # a failed pass exits 1
    assert "failed" in capsys.readouterr().out
