"""The service state in PostgreSQL shared by several replicas: the outbox delivers each alert exactly once with
four concurrent deliverers, one scheduler leads at a time, API keys and job runs are seen by every replica.

Each "replica" is a real ``Database`` with a DuckDB file of its own and the same ``state_url`` (a real PostgreSQL
server from the ``postgres_server`` fixture); deliveries go over HTTP to a real receiver on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from conftest import live_server
from support.alerting import add_destination, fast_settings, insert_regression, resolve, rows
from support.receiver import Receiver

from spanprism.api.alerts.worker import Deliverer, enqueue_pass
from spanprism.api.metrics import Metrics
from spanprism.api.services.scheduler import JobRunner, SchedulerService
from spanprism.api.storage.database import Database
from spanprism.attribution.passes import runs

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(tmp_path, postgres_url):
    """``replicas(n)`` → n Databases sharing one PostgreSQL state database (closed at the end)."""
    opened: list[Database] = []

    def make(n: int) -> list[Database]:
        for _ in range(n):
            opened.append(Database(tmp_path / f"replica{len(opened)}.duckdb", state_url=postgres_url))
        return opened[-n:]

    yield make
    for db in opened:
        db.close()


def _deliver_concurrently(deliverers: list[Deliverer]) -> list[dict[str, int]]:
    barrier = threading.Barrier(len(deliverers))
    results: list[dict[str, int]] = [{} for _ in deliverers]

    def run(i: int) -> None:
        barrier.wait()
        results[i] = deliverers[i].deliver_due(limit=100)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(deliverers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_four_deliverers_send_each_alert_exactly_once(replicas, tmp_path):
    n = 40
    dbs = replicas(4)
    receiver = Receiver().start()
    receiver.delay_s = 0.01  # each attempt takes a while, so the four deliverers overlap
    try:
        add_destination(dbs[0], "webhook", receiver.url + "/hook")
        for i in range(n):
            insert_regression(dbs[0], f"reg-{i:03d}")
        assert enqueue_pass(dbs[0]) == n
        settings = fast_settings(tmp_path / "unused.duckdb")
        deliverers = [Deliverer(db, settings, Metrics()) for db in dbs]
        try:
            first = _deliver_concurrently(deliverers)
            for i in range(n):  # every regression resolves: the resolves go out once too, after their triggers
                resolve(dbs[0], f"reg-{i:03d}")
            assert enqueue_pass(dbs[0]) == n
            second = _deliver_concurrently(deliverers)
        finally:
            for d in deliverers:
                d.close()
    finally:
        receiver.stop()
    delivered = Counter((r["headers"]["x-spanprism-delivery"], r["headers"]["x-spanprism-event"])
                        for r in receiver.ok())  # fmt: skip
    assert len(delivered) == 2 * n and set(delivered.values()) == {1}  # every row once, none twice
    assert sum(c.get("sent", 0) for c in first) == n and sum(c.get("sent", 0) for c in second) == n
    assert sum(1 for c in first if c.get("sent")) >= 2  # the work really was shared
    stored = rows(dbs[3])  # any replica sees the same outbox
    assert len(stored) == 2 * n and {(r["status"], r["attempts"]) for r in stored} == {("sent", 1)}


def test_one_scheduler_leader_at_a_time(replicas, tmp_path):
    a, b = replicas(2)
    settings = fast_settings(tmp_path / "unused.duckdb")
    services = [SchedulerService(settings, JobRunner(db, Metrics())) for db in (a, b)]
    lead, standby = services
    assert lead.leader.check() and not standby.leader.check()
    lead._submit("incremental")
    standby._submit("incremental")  # a standby's firing submits nothing
    assert not lead.runner.idle() and standby.runner.idle()

    # The leader left a run "running" and then died: its session ends, the standby takes over at its next firing
    # and marks that run interrupted.
    crashed = {**runs.new_run("incremental", "scheduler"), "status": "running", "started_at": datetime.now(UTC)}
    with a.state.write() as cur:
        runs.save_run(cur, crashed)
    a.state.close()
    # The client closing its socket does not free the lock at once: the server's backend notices and exits on its
    # own time (longer on a loaded machine). A standby retries at every firing; here the firings come faster.
    deadline = time.monotonic() + 15
    standby._submit("incremental")
    while not standby.leader.leading and time.monotonic() < deadline:
        time.sleep(0.05)
        standby._submit("incremental")
    assert standby.leader.leading and not standby.runner.idle()
    with b.state.read() as cur:
        assert runs.get_run(cur, crashed["id"])["status"] == "interrupted"

    # A clean stop hands the leadership on at once.
    c = replicas(1)[0]
    third = SchedulerService(settings, JobRunner(c, Metrics()))
    assert not third.leader.check()
    standby.stop()
    assert third.leader.check()


def test_job_runs_are_shared(replicas):
    a, b = replicas(2)
    records = [runs.new_run(kind, "api") for kind in ("manual", "nightly", "incremental")]
    with a.state.write() as cur:
        for record in records:
            runs.save_run(cur, record)
        runs.save_run(cur, {**records[0], "status": "succeeded", "counts": {"covering": True}})
    with b.state.read() as cur:
        page, total = runs.list_runs(cur, limit=2)
        assert total == 3 and [r["id"] for r in page] == [r["id"] for r in records[::-1][:2]]
        assert runs.get_run(cur, records[0]["id"])["counts"] == {"covering": True}
        assert runs.last_covering_success(cur)["id"] == records[0]["id"]
    with b.state.write() as cur:
        assert runs.mark_interrupted(cur) == 2


def test_keys_created_and_revoked_on_one_replica_hold_on_the_other(tmp_path, postgres_url):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with live_server(tmp_path / "a", services=[], state_url=postgres_url) as one, \
            live_server(tmp_path / "b", services=[], state_url=postgres_url) as two:  # fmt: skip
        created = one.client.post("/api/v1/keys", json={"name": "dash", "scopes": ["read"]})
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        with two.as_key(key) as client:
            assert client.get("/api/v1/regressions").status_code == 200
            listed = two.client.get("/api/v1/keys").json()
            assert [k["name"] for k in listed["data"]] == ["dash"]
            assert one.client.delete(f"/api/v1/keys/{created.json()['id']}").status_code == 204
            deadline = time.monotonic() + 10
            while client.get("/api/v1/regressions").status_code != 401:  # within the shared-state cache TTL
                assert time.monotonic() < deadline, "a key revoked on one replica still works on the other"
                time.sleep(0.2)
