"""The job runner and the REAL APScheduler inside a live server: ticks, no overlap, coalescing, restarts, the jobs
API and its auth, the CLI going through the server, and cron triggers in a non-UTC time zone."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pytest
from conftest import ADMIN_KEY, live_server

from spanprism.api.cli import main
from spanprism.api.services.scheduler import crontab_day_of_week, job_runner_service, nightly_trigger, scheduler_service
from spanprism.api.storage.connect import open_db
from spanprism.attribution.classifier.model import FEATURE_NAMES, fit_attributor
from spanprism.attribution.passes import runs
from spanprism.attribution.simulator.shifts import SeriesSpec, Shift, at, generate_calls
from spanprism.attribution.vocabulary import LABELS
from spanprism.ingest.load import store_batch
from spanprism.ingest.records import Batch

SERVICES = [job_runner_service, scheduler_service]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def calls() -> pa.Table:
    return generate_calls([SeriesSpec(service="checkout", rate=0.04)], days=4,
                          shifts=(Shift(0, at(2, 8), 5 * 3600, 1.9, "ttft"),), seed=5)  # fmt: skip


def days(calls: pa.Table, lo: float, hi: float) -> pa.Table:
    st = calls.column("start_time").to_numpy()
    bounds = [np.datetime64(at(d).replace(tzinfo=None)) for d in (lo, hi)]
    return calls.filter(pa.array((st >= bounds[0]) & (st < bounds[1])))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, calls) -> dict[str, Path]:
    """A migrated file with days 0-2 of calls, and a tiny seeded classifier artifact."""
    root = tmp_path_factory.mktemp("sched")
    con = open_db(root / "seed.duckdb")
    t = days(calls, 0, 3)
    store_batch(con, Batch(source="days-0-2", calls=t, quarantined=[], spans_seen=t.num_rows))
    con.close()
    rng = random.Random(3)
    features = [{n: rng.gauss(0.0, 1.0) for n in FEATURE_NAMES} for _ in range(8 * len(LABELS))]
    fit_attributor(features, list(LABELS) * 8, seed=0).save(root / "tiny.json")
    return {"db": root / "seed.duckdb", "classifier": root / "tiny.json"}


def server(tmp_path: Path, seeded: dict[str, Path], **overrides):
    shutil.copy(seeded["db"], tmp_path / "server.duckdb")
    settings = {"scheduler_enabled": False, "classifier": seeded["classifier"], **overrides}
    return live_server(tmp_path, services=SERVICES, **settings)


def wait_for(check: Callable[[], object], timeout_s: float = 30.0, every_s: float = 0.05) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def all_runs(live) -> list[dict]:
    body = live.client.get("/api/v1/jobs", params={"limit": 1000}).json()
    return sorted(body["data"], key=lambda r: r["queued_at"])


def test_scheduled_ticks_never_overlap_coalesce_and_catch_up_new_data(tmp_path, seeded, calls):
    with server(tmp_path, seeded, scheduler_enabled=True, incremental_minutes=1 / 60, misfire_grace_s=5) as live:
        runner, db = live.app.state.job_runner, live.app.state.db
        seen: list[dict] = []
        runner.after_pass.append(seen.append)
        job = live.app.state.job_scheduler.scheduler.get_job("incremental")
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 5)
        # First tick does the work; idle ticks after it are skipped and call no after_pass hook.
        wait_for(lambda: sum(r["status"] == "skipped" for r in all_runs(live)) >= 2)
        first = next(r for r in all_runs(live) if r["status"] == "succeeded")
        assert first["trigger"] == "scheduler" and first["kind"] == "incremental"
        assert [r["id"] for r in seen] == [first["id"]] and db.generation == 1
        # New data arrives (as the ingest writer would write it): the next tick covers it, from the last end.
        with db.writer() as cur:
            t = days(calls, 3, 4)
            store_batch(cur, Batch(source="day-3", calls=t, quarantined=[], spans_seen=t.num_rows))
        second = wait_for(lambda: [r for r in all_runs(live) if r["status"] == "succeeded" and r != first])[0]
        end = datetime.fromisoformat(first["window_end"])
        assert datetime.fromisoformat(second["window_start"]) == end - runs.OVERLAP
        # Hold the write lock: the runner blocks on one pass; every request meanwhile coalesces into one queued run.
        scheduler = live.app.state.job_scheduler.scheduler
        scheduler.pause()
        wait_for(runner.idle)
        with db.writer():
            blocked = runner.submit("nightly", "api")
            wait_for(lambda: runner.get(blocked["id"])["status"] == "running")
            waiting = runner.submit("incremental", "api")
            next_tick = job.next_run_time if (job := scheduler.get_job("incremental")) else None
            scheduler.resume()
            time.sleep(2.5)  # scheduler ticks fire while the pass is blocked
            assert scheduler.get_job("incremental").next_run_time.timestamp() >= next_tick.timestamp() + 1
            assert runner.submit("incremental", "api")["id"] == waiting["id"]
            assert [r["id"] for r in all_runs(live) if r["status"] == "queued"] == [waiting["id"]]
        wait_for(lambda: live.client.get(f"/api/v1/jobs/{waiting['id']}").json()["status"] == "skipped")
        wait_for(runner.idle)
        final = all_runs(live)
    # One pass at a time: every run started after the previous one finished.
    timed = sorted((r for r in final if r["started_at"]), key=lambda r: r["started_at"])
    for prev, nxt in itertools.pairwise(timed):
        assert nxt["started_at"] >= prev["finished_at"], (prev, nxt)
    assert [r["id"] for r in seen][:2] == [first["id"], second["id"]]


def test_restart_marks_the_crashed_run_interrupted_and_catches_up(tmp_path, seeded):
    shutil.copy(seeded["db"], tmp_path / "server.duckdb")
    con = open_db(tmp_path / "server.duckdb")
    crashed = {**runs.new_run("incremental", "scheduler"), "status": "running", "started_at": datetime.now(UTC)}
    runs.save_run(con, crashed)
    con.close()
    with live_server(tmp_path, services=SERVICES, classifier=seeded["classifier"], incremental_minutes=60) as live:
        caught_up = wait_for(lambda: [r for r in all_runs(live) if r["status"] == "succeeded"])[0]
        assert caught_up["trigger"] == "scheduler" and caught_up["window_start"] is not None
        stored = live.client.get(f"/api/v1/jobs/{crashed['id']}").json()
        assert stored["status"] == "interrupted" and stored["error"]
        metrics = live.client.get("/metrics").text
        assert 'spanprism_job_runs_total{kind="incremental",status="succeeded"} 1.0' in metrics


def test_jobs_api_submit_read_list_and_auth(tmp_path, seeded):
    with server(tmp_path, seeded) as live:
        assert live.as_key(None).post("/api/v1/jobs/attribute").status_code == 401
        assert live.as_key(None).get("/api/v1/jobs").status_code == 401
        reader = live.client.post("/api/v1/keys", json={"name": "dash", "scopes": ["read"]}).json()["key"]
        assert live.as_key(reader).post("/api/v1/jobs/attribute", json={}).status_code == 403
        resp = live.client.post("/api/v1/jobs/attribute", json={"kind": "manual", "since": "2026-03-03"})
        assert resp.status_code == 202 and resp.json()["status"] in ("queued", "running")
        run_id = resp.json()["id"]
        done = wait_for(lambda: (r := live.as_key(reader).get(f"/api/v1/jobs/{run_id}").json())["status"]
                        not in ("queued", "running") and r)  # fmt: skip
        assert done["status"] == "succeeded" and done["trigger"] == "api"
        assert done["window_start"] == "2026-03-03T00:00:00Z" and done["counts"]["series"] == 1
        assert live.client.post("/api/v1/jobs/attribute").status_code == 202  # no body: a full manual pass
        wait_for(live.app.state.job_runner.idle)
        listed = live.as_key(reader).get("/api/v1/jobs", params={"kind": "manual", "limit": 1, "offset": 1}).json()
        assert listed["count"] == 2 and [r["id"] for r in listed["data"]] == [run_id]
        assert live.client.get("/api/v1/jobs", params={"status": "failed"}).json() == {"data": [], "count": 0}
        assert live.client.get("/api/v1/jobs/nope").status_code == 404
        bad = {"kind": "incremental", "since": "2026-03-03"}
        assert live.client.post("/api/v1/jobs/attribute", json=bad).status_code == 422
        assert live.client.get("/api/v1/jobs", params={"limit": 10**6}).status_code == 422


def test_cli_attribute_goes_through_the_server_that_holds_the_file(tmp_path, seeded, capsys, monkeypatch):
    with server(tmp_path, seeded) as live:
        # With SPANPRISM_URL the CLI queues the pass on the server and polls it.
        monkeypatch.setenv("SPANPRISM_URL", live.url)
        monkeypatch.setenv("SPANPRISM_API_KEY", ADMIN_KEY)
        capsys.readouterr()
        assert main(["attribute", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["run"]["trigger"] == "api"
        monkeypatch.delenv("SPANPRISM_URL")
        # Another process finds the file locked and uses the server on the configured host/port.
        port = live.url.rsplit(":", 1)[1]
        env = {**os.environ, "SPANPRISM_PORT": port, "SPANPRISM_API_KEY": ADMIN_KEY}
        proc = subprocess.run([sys.executable, "-m", "spanprism.api.cli", "--db", str(live.settings.db), "jobs", "run",
                               "nightly", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        record = json.loads(proc.stdout)["run"]
        assert (record["kind"], record["trigger"], record["status"]) == ("nightly", "api", "succeeded")


@pytest.mark.parametrize(("field", "expected"), [
    ("*", "*"), ("0", "sun"), ("7", "sun"), ("1-5", "mon,tue,wed,thu,fri"), ("*/2", "sun,tue,thu,sat"),
    ("0,6", "sun,sat"), ("mon-fri", "mon-fri"), ("1-7/3", "mon,thu,sun"),
])  # fmt: skip
def test_crontab_day_of_week_uses_standard_numbers(field, expected):
    assert crontab_day_of_week(field) == expected


def test_nightly_cron_fires_at_local_time_in_its_time_zone():
    ny = ZoneInfo("America/New_York")
    now = datetime(2026, 3, 6, 12, 0, tzinfo=ny)  # a Friday; DST starts on Sunday 2026-03-08
    # "1" is Monday in crontab: 02:00 New York time on Monday the 9th, already on EDT (UTC-4).
    fire = nightly_trigger("0 2 * * 1", "America/New_York").get_next_fire_time(None, now)
    assert fire == datetime(2026, 3, 9, 2, 0, tzinfo=ny) and fire.utcoffset().total_seconds() == -4 * 3600
    assert fire.astimezone(UTC) == datetime(2026, 3, 9, 6, 0, tzinfo=UTC)
    sunday = nightly_trigger("30 3 * * 0", "Asia/Kolkata").get_next_fire_time(None, now)
    assert sunday.astimezone(UTC) == datetime(2026, 3, 7, 22, 0, tzinfo=UTC)  # Sun 03:30 IST = Sat 22:00 UTC
    daily = nightly_trigger("0 2 * * *", "UTC").get_next_fire_time(None, now)
    assert daily == datetime(2026, 3, 7, 2, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        nightly_trigger("0 2 * *", "UTC")
    with pytest.raises(ValueError):
        nightly_trigger("0 2 1 * 1", "UTC")  # cron would OR day-of-month and day-of-week
    with pytest.raises(ValueError):
        crontab_day_of_week("8")


def test_a_failing_after_pass_callback_does_not_stop_the_runner(tmp_path, seeded):
    with server(tmp_path, seeded) as live:
        runner = live.app.state.job_runner
        called = threading.Event()

        def broken(record: dict) -> None:
            raise RuntimeError("alerts are down")

        runner.after_pass.extend([broken, lambda record: called.set()])
        first = runner.submit("manual", "api")
        assert called.wait(30)
        wait_for(runner.idle)
        assert runner.get(first["id"])["status"] == "succeeded"
