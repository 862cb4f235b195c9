"""``spanprism worker``: one attribution worker of many, each taking hash shards of the series through leases.

Workers need the calls where every one of them can read them (ClickHouse, ``SPANPRISM_CLICKHOUSE_URL``) and the
results where every process shares them (PostgreSQL, ``SPANPRISM_STATE_URL``). Each keeps its own DuckDB file as a
rollup cache, rebuilt from ClickHouse when it starts (the rollups of *every* series: the cache is not sharded).

One *round* (:meth:`ShardWorker.run_round`): refresh the rollup cache, then claim due shards one at a time
(:mod:`spanprism.attribution.passes.shards`) and, for each, run detection and attribution on that shard's series
only, from the shard's ``covered_until`` minus :data:`~spanprism.attribution.passes.runs.OVERLAP` (everything on
its first pass), writing its results in transactions fenced by the lease; a background thread renews the lease
meanwhile. A shard is due when its last pass finished before ``due_before`` (``--once``: before the worker
started; looping: ``worker_every_s`` ago). With no workers configured, ``serve``'s scheduler leader runs the passes
as before; with workers, set ``SPANPRISM_SCHEDULER_ENABLED=false`` on the ``serve`` replicas.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database
from spanprism.attribution.classifier.model import Attributor, load_default
from spanprism.attribution.passes import shards
from spanprism.attribution.passes.runs import OVERLAP, attribute
from spanprism.attribution.store import calls
from spanprism.attribution.store.rollups import refresh_rollups
from spanprism.models.state import StateCursor
from spanprism.models.times import as_utc

log = logging.getLogger("spanprism.worker")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def default_owner() -> str:
    """``host:pid``: unique among live workers, and says where to look when a lease is held too long."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RoundSummary:
    """What one round did: the shards passed, and the counts of their passes added up."""

    shards: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    series: int = 0
    regressions: int = 0
    attributed: int = 0
    seconds: float = 0.0


class ShardWorker:
    """Claims due shards and runs their passes until none is left (a round), renewing each lease while it works."""

    def __init__(self, db: Database, settings: Settings, *, owner: str | None = None,
                 attributor: Attributor | None = None) -> None:  # fmt: skip
        if not db.state.shared:
            raise ValueError("spanprism worker needs SPANPRISM_STATE_URL (a PostgreSQL database every worker shares)")
        self.db, self.settings = db, settings
        self.owner = owner or default_owner()
        self.lease_s = settings.worker_lease_s
        self.attributor = attributor or load_default(settings.classifier)
        self.fresh_until: datetime | None = None  # how far this process's rollup cache is fresh (None: not yet)
        self._refreshed = False

    # --- one round ------------------------------------------------------------------------------------------------

    def run_round(self, *, due_before: datetime, stop: threading.Event | None = None) -> RoundSummary:
        """Pass every shard that is due and that no live worker holds; returns when none is left (or on ``stop``)."""
        t0 = time.perf_counter()
        summary = RoundSummary()
        self._refreshed = False  # the rollup cache is refreshed once a round, before its first shard
        with self.db.state.write() as cur:
            shards.ensure_shards(cur)
        while stop is None or not stop.is_set():
            with self.db.state.write() as cur:
                lease = shards.claim(cur, self.owner, now=_now(), lease_s=self.lease_s, due_before=due_before)
            if lease is None:
                break
            self._one(lease, summary)
        summary.seconds = round(time.perf_counter() - t0, 2)
        return summary

    def _one(self, lease: shards.Lease, summary: RoundSummary) -> None:
        with self._renewing(lease) as lost:
            try:
                with self.db.writer() as con:
                    if not self._refreshed:
                        self._refresh(con)
                        self._refreshed = True
                    end = self.fresh_until
                    keys = shards.keys_of(lease.shard, _series_keys(con))
                    counts = self._pass(con, lease, keys) if keys else {}
            except shards.LeaseLost:
                log.warning("shard %d taken over before its results were written; nothing written", lease.shard)
                summary.lost.append(lease.shard)
                return
            except Exception as exc:  # a failed shard is released at once: another worker (or the next round) retries
                log.exception("shard %d failed", lease.shard)
                summary.failed[lease.shard] = f"{type(exc).__name__}: {exc}"
                with self.db.state.write() as cur:
                    shards.release(cur, lease)
                return
        with self.db.state.write() as cur:
            finished = not lost.is_set() and shards.finish(cur, lease, now=_now(), covered_until=end)
        if not finished:
            summary.lost.append(lease.shard)
            return
        summary.shards.append(lease.shard)
        summary.series += len(keys)
        summary.regressions += int(counts.get("regressions_open", 0)) + int(counts.get("regressions_resolved", 0))
        summary.attributed += int(counts.get("attributed", 0))

    def _refresh(self, con: Any) -> None:
        """Bring the rollup cache up to the newest call: all history the first time, then from where it was."""
        span = calls.data_span(con)
        if span is None:
            return
        since = _EPOCH if self.fresh_until is None else self.fresh_until - OVERLAP
        refresh_rollups(con, since, None)
        self.fresh_until = as_utc(span[1])

    def _pass(self, con: Any, lease: shards.Lease, keys: list[str]) -> dict[str, Any]:
        since = lease.covered_until - OVERLAP if lease.covered_until else None

        @contextmanager
        def fenced() -> Iterator[StateCursor]:
            # The lease is checked (and its row locked) just before commit, not held during detection.
            with self.db.state.write() as cur:
                yield cur
                shards.fence(cur, lease, now=_now())

        return attribute(con, since=since, until=None, classifier=self.attributor, results=fenced, keys=keys,
                         refresh=False)  # fmt: skip

    @contextmanager
    def _renewing(self, lease: shards.Lease) -> Iterator[threading.Event]:
        """Renew ``lease`` every quarter of its length while the block runs; the event is set if it was lost."""
        done, lost = threading.Event(), threading.Event()

        def beat() -> None:
            while not done.wait(self.lease_s / 4):
                try:
                    with self.db.state.write() as cur:
                        shards.renew(cur, lease, now=_now(), lease_s=self.lease_s)
                except shards.LeaseLost:
                    lost.set()
                    return
                except Exception:  # the database is briefly away: try again next beat (the lease may still hold)
                    log.warning("could not renew the lease of shard %d", lease.shard, exc_info=True)

        thread = threading.Thread(target=beat, name=f"lease-{lease.shard}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            done.set()
            thread.join()

    # --- the loop -------------------------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, *, every_s: float) -> None:
        """Rounds until ``stop``: each passes the shards last passed more than ``every_s`` ago."""
        while not stop.is_set():
            summary = self.run_round(due_before=_now() - timedelta(seconds=every_s), stop=stop)
            if summary.shards or summary.failed:
                log.info("worker %s passed shards %s (%d series) in %.1f s; failed %s", self.owner, summary.shards,
                         summary.series, summary.seconds, sorted(summary.failed))  # fmt: skip
            stop.wait(min(5.0, max(every_s / 10, 0.5)))  # then look for due shards (or a dead worker's) again


def _series_keys(con: Any) -> list[str]:
    return [r[0] for r in con.execute("SELECT series_key FROM series").fetchall()]


def _now() -> datetime:
    return datetime.now(UTC)
