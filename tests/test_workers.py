"""``spanprism worker`` processes (real subprocesses) sharding attribution over a real PostgreSQL state database
and ClickHouse (chDB behind its loopback HTTP endpoint), against one process doing it all.

One small simulated export is ingested into ClickHouse once. The reference is one ``spanprism attribute`` over it
(results in one PostgreSQL database); each test then runs workers against a fresh PostgreSQL database and compares
the regression records: same ids, same labels, nothing lost or duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from spanprism.api.cli import main
from spanprism.api.storage.state import PostgresState
from spanprism.attribution.passes import shards
from spanprism.attribution.store.records import list_regressions

pytestmark = [pytest.mark.postgres, pytest.mark.clickhouse, pytest.mark.slow]

SIM = ["--seed", "31", "--days", "2", "--series", "5", "--rate-min", "0.02", "--rate-max", "0.06"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clickhouse_server, postgres_server) -> dict[str, object]:
    base = tmp_path_factory.mktemp("workers")
    sim = base / "sim"
    assert main(["--db", str(base / "sim.duckdb"), "simulate", "--out", str(sim), *SIM]) == 0
    ch_url, reference_url = clickhouse_server.new_database(), postgres_server.url()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPANPRISM_CLICKHOUSE_URL", ch_url)
        assert main(["--db", str(base / "ingest.duckdb"), "ingest", str(sim)]) == 0
        mp.setenv("SPANPRISM_STATE_URL", reference_url)
        assert main(["--db", str(base / "one.duckdb"), "attribute"]) == 0
    reference = _records(reference_url)
    assert len(reference) >= 2 and any(r["label"] != "unexplained" for r in reference)
    return {"base": base, "ch": ch_url, "reference": reference, "pg": postgres_server}


def _records(url: str) -> list[dict]:
    state = PostgresState(url, migrate=False)
    try:
        with state.read() as cur:
            return list_regressions(cur, detail=True)
    finally:
        state.close()


def _leases(url: str) -> list[dict]:
    state = PostgresState(url, migrate=False)
    try:
        with state.read() as cur:
            return shards.leases(cur)
    finally:
        state.close()


def _summary(records: list[dict]) -> list[tuple]:
    return [(r["id"], r["status"], r["start"], r["end"], r["metric"], r["label"], r["reason"]) for r in records]


def _differences(got: list[dict], want: list[dict]) -> list[str]:
    """Which fields of which records differ (the assertion message: a long record diff is truncated by pytest)."""
    out = [f"{len(got)} records vs {len(want)}"] if len(got) != len(want) else []
    for a, b in zip(got, want, strict=False):
        out += [f"{b['id']}.{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out


def _worker(world: dict, state_url: str, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "SPANPRISM_CLICKHOUSE_URL": world["ch"], "SPANPRISM_STATE_URL": state_url, **env}
    db = world["base"] / f"{name}-{time.monotonic_ns()}.duckdb"  # each worker: a rollup cache of its own
    return subprocess.Popen([sys.executable, "-m", "spanprism.api.cli", "--db", str(db), "worker", "--owner", name,
                             *args], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _round(world: dict, url: str) -> list[list[int]]:
    """Three ``--once`` workers started together; the shards each passed."""
    procs = [_worker(world, url, f"w{i}", "--once", "--json") for i in range(3)]
    passed = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr.decode()[-3000:]
        passed.append(json.loads(stdout.decode().strip().splitlines()[-1])["shards"])
    # Every shard passed in each round. (A worker started later may pass again a shard another finished before it
    # started: ``--once`` passes what is due when it starts; passes are idempotent.)
    assert {s for p in passed for s in p} == set(range(shards.SHARDS))
    return passed


def test_three_workers_give_the_records_of_one_process(world):
    url = world["pg"].url()
    passed = _round(world, url) + _round(world, url)  # the second sees every shard's regressions (cross-shard context)
    assert sum(1 for p in passed if p) >= 2  # the work was shared
    records = _records(url)
    # Ids, spans, metrics and labels: as one process after two rounds.
    assert _summary(records) == _summary(world["reference"])
    # Every field (contributions, evidence, exemplars, confidence): a label's cross-shard context is read from the
    # shards stored when it is computed, so under a loaded machine the relabelling may need a further round to
    # settle (one of four runs here differed after two rounds); it must settle within two more, equal to one process.
    # Evidence included: it once differed in the last bits of the route mix distances, a float sum in the order of a
    # set of strings, which differs between processes (tests/test_process_independence.py).
    for _ in range(2):
        if records == world["reference"]:
            break
        print("not settled after a round:", *_differences(records, world["reference"]), sep="\n  ")
        _round(world, url)
        records = _records(url)
    assert records == world["reference"], _differences(records, world["reference"])


def test_a_killed_worker_s_shard_is_taken_over_and_nothing_is_lost_or_duplicated(world):
    url = world["pg"].url()
    busy = sorted({shards.shard_of(k) for k in _series_keys(world)})
    assert len(busy) >= 2
    victim = _worker(world, url, "victim", SPANPRISM_WORKER_LEASE_S="3", SPANPRISM_WORKER_EVERY_S="3600")
    held = None
    deadline = time.monotonic() + 300
    try:
        while held is None:  # kill it while it works on its second shard holding series (the first is stored)
            assert victim.poll() is None and time.monotonic() < deadline, "the worker never reached the shard"
            rows = {r["shard"]: r for r in _leases_or_none(url)}
            row = rows.get(busy[1])
            if row and row["owner"] == "victim" and rows[busy[0]]["passes"] >= 1:
                held = row
            else:
                time.sleep(0.02)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    killed_at = datetime.now(UTC)
    before = {r["shard"]: r for r in _leases(url)}
    assert before[busy[1]]["owner"] == "victim" and before[busy[1]]["passes"] == 0  # left mid-pass, lease held

    heir = _worker(world, url, "heir", SPANPRISM_WORKER_LEASE_S="3", SPANPRISM_WORKER_EVERY_S="1")
    try:
        deadline = time.monotonic() + 300
        while True:  # until the heir has passed every shard after the kill, and once more (cross-shard context)
            assert heir.poll() is None, heir.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            rows = _leases(url)
            done = all(r["last_finished_at"] is not None and r["last_finished_at"] > killed_at for r in rows)
            if done and _records(url) == world["reference"]:  # every field: labels settle once all shards stored
                break
            assert time.monotonic() < deadline, (done, _differences(_records(url), world["reference"]))
            time.sleep(0.5)
    finally:
        heir.send_signal(signal.SIGTERM)
        heir.wait(60)
    after = {r["shard"]: r for r in _leases(url)}
    assert after[busy[1]]["passes"] >= 1 and after[busy[1]]["owner"] is None  # taken over, finished, released
    records = _records(url)
    assert len({r["id"] for r in records}) == len(records) == len(world["reference"])
    assert records == world["reference"]


def _leases_or_none(url: str) -> list[dict]:
    """The lease rows, or none before the worker has migrated the database."""
    try:
        return _leases(url)
    except Exception:  # relation "shard_leases" does not exist yet
        return []


def _series_keys(world: dict) -> list[str]:
    import duckdb

    con = duckdb.connect(str(world["base"] / "one.duckdb"), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT series_key FROM series").fetchall()]
    finally:
        con.close()
