"""Shard leases in a real PostgreSQL state database: claim, renewal, expiry and takeover, fencing, due shards.

Times are passed explicitly (``now``), so expiry is tested without sleeping.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from spanprism.api.storage.state import PostgresState
from spanprism.attribution.passes import shards

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
def state(postgres_url):
    store = PostgresState(postgres_url)
    with store.write() as cur:
        shards.ensure_shards(cur)
    yield store
    store.close()


def _claim(state, owner, now, *, lease_s=60.0, due_before=None):
    with state.write() as cur:
        return shards.claim(cur, owner, now=now, lease_s=lease_s, due_before=due_before or now)


def test_shard_of_is_stable_and_spreads_keys():
    keys = [f"svc-{i}|openai|gpt-4o|chat" for i in range(6400)]
    counts = [0] * shards.SHARDS
    for k in keys:
        counts[shards.shard_of(k)] += 1
    assert min(counts) > 50 and max(counts) < 160  # ≈ 100 each: a hash, not a range
    # Pinned: a change of the hash would move series between shards under running workers.
    assert shards.shard_of("a|b|c|d") == 63
    assert sorted(k for s in range(shards.SHARDS) for k in shards.keys_of(s, keys[:100])) == sorted(keys[:100])


def test_every_shard_is_claimed_once_then_none_is_due(state):
    got = [_claim(state, "w1", T0) for _ in range(shards.SHARDS)]
    assert sorted(lease.shard for lease in got) == list(range(shards.SHARDS))
    assert _claim(state, "w2", T0) is None  # all held
    for lease in got:
        with state.write() as cur:
            assert shards.finish(cur, lease, now=T0, covered_until=T0)
    assert _claim(state, "w2", T0 + timedelta(seconds=1), due_before=T0) is None  # finished at T0: not due before T0
    again = _claim(state, "w2", T0 + timedelta(seconds=1), due_before=T0 + timedelta(seconds=1))
    assert again is not None and again.covered_until == T0


def test_concurrent_claims_never_share_a_shard(state):
    taken: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def grab(owner: str) -> None:
        barrier.wait()
        while (lease := _claim(state, owner, T0)) is not None:
            with lock:
                taken.append(lease.shard)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == list(range(shards.SHARDS))  # each exactly once


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(state):
    first = _claim(state, "dead", T0, lease_s=10)
    held = [first] + [_claim(state, "dead", T0, lease_s=10) for _ in range(shards.SHARDS - 1)]
    assert _claim(state, "alive", T0 + timedelta(seconds=9)) is None  # not expired yet
    with state.write() as cur:  # a renewal moves the expiry
        held[0] = shards.renew(cur, held[0], now=T0 + timedelta(seconds=9), lease_s=10)
    later = T0 + timedelta(seconds=11)
    taken = _claim(state, "alive", later)
    assert taken is not None and taken.shard != first.shard  # shard 0 renewed; another, expired, is taken over
    assert taken.taken_from == "dead" and first.taken_from is None  # a takeover names the old holder
    with state.write() as cur:  # the old holder of the taken shard can neither renew, write nor finish
        old = next(lease for lease in held if lease.shard == taken.shard)
        with pytest.raises(shards.LeaseLost):
            shards.renew(cur, old, now=later, lease_s=10)
        with pytest.raises(shards.LeaseLost):
            shards.fence(cur, old, now=later)
        assert not shards.finish(cur, old, now=later, covered_until=later)
        shards.fence(cur, taken, now=later)  # the new holder may
        with pytest.raises(shards.LeaseLost):  # an unrenewed lease past its expiry may not write either
            shards.fence(cur, held[0], now=T0 + timedelta(seconds=20))


def test_release_after_a_failure_makes_the_shard_claimable_at_once(state):
    lease = _claim(state, "w1", T0)
    with state.write() as cur:
        shards.release(cur, lease)
    again = _claim(state, "w2", T0)
    assert again is not None and again.shard == lease.shard and again.covered_until is None


def test_worker_refuses_to_run_without_shared_calls_and_state(tmp_path, monkeypatch, capsys):
    from spanprism.api.cli import main

    for name in ("SPANPRISM_STATE_URL", "SPANPRISM_CLICKHOUSE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--db", str(tmp_path / "w.duckdb"), "worker", "--once"]) == 2
    assert "SPANPRISM_STATE_URL" in capsys.readouterr().out
    assert not (tmp_path / "w.duckdb").exists()  # refused before opening anything


def test_each_shard_s_nightly_runs_once_per_slot(state):
    slot = T0 - timedelta(hours=10)
    first = [_claim_nightly(state, "w1", slot) for _ in range(shards.SHARDS)]
    assert sorted(lease.shard for lease in first) == list(range(shards.SHARDS))  # never re-detected: all due
    assert all(lease.nightly_slot == slot for lease in first)
    half = shards.SHARDS // 2
    for lease in first[:half]:
        with state.write() as cur:
            assert shards.finish(cur, lease, now=T0, covered_until=T0, nightly_slot=slot)
    for lease in first[half:]:  # the others' worker failed: released unrecorded, due again at once
        with state.write() as cur:
            shards.release(cur, lease)
    again = [_claim_nightly(state, "w2", slot) for _ in range(shards.SHARDS)]
    assert sorted(lease.shard for lease in again if lease) == sorted(lease.shard for lease in first[half:])
    for lease in filter(None, again):
        with state.write() as cur:
            assert shards.finish(cur, lease, now=T0, covered_until=T0, nightly_slot=slot)
    assert _claim_nightly(state, "w3", slot) is None  # every shard done for this slot
    with state.read() as cur:
        assert {row["nightly_slot"] for row in shards.leases(cur)} == {slot}
    # An incremental pass does not move the slot; the next slot makes every shard due again.
    with state.write() as cur:
        lease = shards.claim(cur, "w4", now=T0 + timedelta(minutes=5), lease_s=60, due_before=T0 + timedelta(minutes=5))
        assert lease is not None and lease.nightly_slot is None
        assert shards.finish(cur, lease, now=T0 + timedelta(minutes=6), covered_until=T0)
    assert _claim_nightly(state, "w3", slot) is None
    assert _claim_nightly(state, "w3", slot + timedelta(days=1)) is not None


def _claim_nightly(state, owner, slot):
    with state.write() as cur:
        return shards.claim(cur, owner, now=T0, lease_s=60, nightly_slot=slot)


def test_the_nightly_slot_is_the_latest_cron_firing():
    from spanprism.api.services.shard_worker import nightly_slot
    from spanprism.api.settings import Settings

    daily = Settings(nightly_cron="0 2 * * *")
    assert nightly_slot(daily, T0) == datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    assert nightly_slot(daily, datetime(2026, 12, 7, 1, 59, tzinfo=UTC)) == datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
    zoned = Settings(nightly_cron="0 2 * * *", nightly_timezone="Europe/Paris")  # 02:00 in Paris = 01:00 UTC
    assert nightly_slot(zoned, T0) == datetime(2026, 12, 7, 1, 0, tzinfo=UTC)


def test_a_taken_over_worker_s_running_round_is_marked_interrupted(state):
    from spanprism.attribution.passes import runs

    def record(worker: str, status: str) -> dict:
        rec = runs.new_run("incremental", "worker")
        rec.update(status=status, started_at=T0, counts={"worker": worker, "shards": []})
        with state.write() as cur:
            runs.save_run(cur, rec)
        return rec

    dead, alive, done = record("dead", "running"), record("alive", "running"), record("dead", "succeeded")
    with state.write() as cur:
        assert runs.mark_worker_interrupted(cur, "dead", reason="taken over", now=T0) == 1
    with state.read() as cur:
        got = {r["id"]: r for r in runs.list_runs(cur, limit=10)[0]}
    assert got[dead["id"]]["status"] == "interrupted" and got[dead["id"]]["error"] == "taken over"
    assert got[alive["id"]]["status"] == "running" and got[done["id"]]["status"] == "succeeded"


def test_a_quiet_worker_round_without_a_lease_is_marked_interrupted(state):
    """A worker killed after its last shard (or between shards) holds no lease to take over: its round is found by
    having held no lease and recorded no progress for a lease period."""
    from spanprism.attribution.passes import runs

    def record(worker: str, started: datetime, progress: datetime | None = None) -> dict:
        rec = runs.new_run("incremental", "worker")
        counts = {"worker": worker, "shards": [1]} | ({"progress_at": progress.isoformat()} if progress else {})
        rec.update(status="running", started_at=started, counts=counts)
        with state.write() as cur:
            runs.save_run(cur, rec)
        return rec

    lease_s = 60.0
    holder = _claim(state, "holder", T0 - timedelta(seconds=10), lease_s=lease_s)  # live lease until T0 + 50 s
    dead = record("dead", T0 - timedelta(hours=1))  # started long ago, never progressed, no lease
    stalled = record("dead-too", T0 - timedelta(hours=1), T0 - timedelta(seconds=120))  # last progress 2 min ago
    between = record("between", T0 - timedelta(hours=1), T0 - timedelta(seconds=5))  # finished a shard 5 s ago
    holding = record("holder", T0 - timedelta(hours=1))  # quiet, but it holds a live lease: working on a shard
    # Quiet, its lease expired but not yet taken over: it died mid-shard, and the takeover marks it (with the shard).
    _claim(state, "expired", T0 - timedelta(seconds=600), lease_s=lease_s)
    expired = record("expired", T0 - timedelta(hours=1))
    with state.write() as cur:
        live = shards.holders(cur)
        assert live == {holder.owner, "expired"}
        got = runs.mark_stale_worker_rounds(cur, live=live, quiet_since=T0 - timedelta(seconds=lease_s),
                                            reason="quiet", now=T0)  # fmt: skip
    assert sorted(got) == sorted([dead["id"], stalled["id"]])
    with state.read() as cur:
        status = {r["id"]: r["status"] for r in runs.list_runs(cur, limit=10)[0]}
    assert status[dead["id"]] == status[stalled["id"]] == "interrupted"
    assert status[between["id"]] == status[holding["id"]] == status[expired["id"]] == "running"
