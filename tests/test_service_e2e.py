"""The service end to end: exports uploaded in two halves, attribution passes through the jobs API, a signed webhook.

A real server (uvicorn on 127.0.0.1) over an empty DuckDB file receives the first half of a simulated workload, cut in
the middle of its longest regression; a pass opens that regression and the webhook receiver gets exactly one signed
trigger per open regression. An idle pass is ``skipped`` and sends nothing. The server restarts, the second half
arrives, the next pass resolves the regression and exactly one resolve follows — none of the triggers is repeated.
"""

from __future__ import annotations

import gzip
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import duckdb
import orjson
import pytest
from conftest import Live, live_server
from support.receiver import Receiver
from support.world import build_world

from spanprism.api.alerts.webhook import verify_signature
from spanprism.attribution.store.records import list_regressions

SECRET = "e2e-hmac-secret"


def split_exports(sim: Path, cut_ns: int, out: Path) -> tuple[Path, Path]:
    """Every span of the simulator's OTLP JSON-lines exports, split at ``cut_ns`` into two gzip files."""
    halves = [out / "first.jsonl.gz", out / "second.jsonl.gz"]
    with gzip.open(halves[0], "wb") as before, gzip.open(halves[1], "wb") as after:
        for path in sorted(sim.glob("spans-*.jsonl.gz")):
            with gzip.open(path, "rb") as lines:
                for line in lines:
                    doc = orjson.loads(line)
                    for side, writer in enumerate((before, after)):
                        part = _keep(doc, lambda span, side=side: (int(span["startTimeUnixNano"]) >= cut_ns) == side)
                        if part["resourceSpans"]:
                            writer.write(orjson.dumps(part) + b"\n")
    return halves[0], halves[1]


def _keep(doc: dict, wanted) -> dict:
    resources = []
    for rs in doc["resourceSpans"]:
        scopes = [{**ss, "spans": kept} for ss in rs["scopeSpans"] if (kept := [s for s in ss["spans"] if wanted(s)])]
        if scopes:
            resources.append({**rs, "scopeSpans": scopes})
    return {"resourceSpans": resources}


def _upload(live: Live, path: Path) -> None:
    reply = live.client.post("/api/v1/ingest", params={"filename": path.name}, content=path.read_bytes())
    assert reply.status_code == 200, reply.text
    assert reply.json()["calls_stored"] > 0


def _pass(live: Live) -> dict:
    run = live.client.post("/api/v1/jobs/attribute", json={"kind": "incremental"})
    assert run.status_code == 202, run.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = live.client.get(f"/api/v1/jobs/{run.json()['id']}").json()
        if record["status"] not in ("queued", "running"):
            return record
        time.sleep(0.1)
    raise AssertionError("the attribution pass did not finish in 120 s")


def _events(receiver: Receiver) -> list[tuple[str, str]]:
    """(event, regression id) of every delivered webhook, after checking its signature."""
    found = []
    for request in receiver.ok():
        headers = request["headers"]
        assert verify_signature(SECRET, headers["x-spanprism-timestamp"], request["body"],
                                headers["x-spanprism-signature"])  # fmt: skip
        body = orjson.loads(request["body"])
        found.append((body["event"], body["id"]))
    return found


def _wait_for(receiver: Receiver, count: int, timeout_s: float = 20) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout_s
    while len(receiver.ok()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return _events(receiver)


@pytest.fixture
def halves(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> tuple[Path, Path]:
    world = build_world(tmp_path_factory.getbasetemp())
    con = duckdb.connect(str(world), read_only=True)
    try:
        longest = max(list_regressions(con), key=lambda r: _ts(r["end"]) - _ts(r["start"]))
    finally:
        con.close()
    cut = (_ts(longest["start"]) + _ts(longest["end"])) / 2  # mid-episode: the first half ends while it is open
    return split_exports(world.parent / "sim", int(cut * 1e9), tmp_path)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_two_halves_alert_once_per_regression_across_a_restart(tmp_path: Path, halves) -> None:
    first, second = halves
    receiver = Receiver().start()
    settings = {"scheduler_enabled": False, "alert_poll_s": 0.05, "alert_backoff_base_s": 0.02,
                "alert_backoff_max_s": 0.1}  # fmt: skip
    try:
        with live_server(tmp_path, **settings) as live:
            dest = live.client.post(
                "/api/v1/alerts/destinations",
                json={
                    "name": "hook",
                    "kind": "webhook",
                    "secret": {"url": receiver.url + "/hook", "hmac_secret": SECRET},
                },
            )
            assert dest.status_code == 201, dest.text
            rule = {"name": "everything", "destination_id": dest.json()["id"]}
            assert live.client.post("/api/v1/alerts/rules", json=rule).status_code == 201

            _upload(live, first)
            assert _pass(live)["status"] == "succeeded"
            opened = {r["id"] for r in live.client.get("/api/v1/regressions", params={"status": "open"}).json()["data"]}
            assert opened, "the cut was placed inside a regression: it must be open after the first half"
            events = _wait_for(receiver, len(opened))
            assert sorted(events) == sorted(("trigger", rid) for rid in opened)

            idle = _pass(live)  # nothing new was ingested: the pass is skipped and alerts nobody
            assert idle["status"] == "skipped"
            time.sleep(0.5)  # ten alert polls
            assert len(receiver.ok()) == len(opened)

        with live_server(tmp_path, **settings) as live:  # a restart: the outbox lives in the file, not in memory
            _upload(live, second)
            assert _pass(live)["status"] == "succeeded"
            records = {r["id"]: r for r in live.client.get("/api/v1/regressions").json()["data"]}
            assert opened <= set(records), "an alerted regression keeps its id when more data arrives"
            resolved = {rid for rid in opened if records.get(rid, {}).get("status") == "resolved"}
            assert resolved, "the second half ends the regression the first half left open"
            _wait_for(receiver, len(opened) + len(resolved))
            time.sleep(0.5)  # anything extra (a repeated trigger) would arrive within these polls
            events = _events(receiver)
            counts = Counter(events)
            assert all(n == 1 for n in counts.values()), counts
            assert {rid for event, rid in events if event == "resolve"} == resolved
            assert {rid for event, rid in events if event == "trigger"} >= opened
    finally:
        receiver.stop()
