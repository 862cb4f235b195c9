"""``spanprism worker``: one attribution worker of many, each taking hash shards of the series through leases.

Workers need the calls where every one of them can read them (ClickHouse, ``SPANPRISM_CLICKHOUSE_URL``) and the
results where every process shares them (PostgreSQL, ``SPANPRISM_STATE_URL``). Each keeps its own DuckDB file as a
rollup cache of the shards it passes: the series registry (every series' key) is refreshed once a round, and a
shard's rollups, pushed down to ClickHouse for that shard's series only, when the worker claims it (per shard, how
far the cache is fresh is kept in ``shard_rollups``). N workers share the rollup work instead of each doing all.

One *round* (:meth:`ShardWorker.run_round`): refresh the series registry, then claim due shards one at a time
(:mod:`spanprism.attribution.passes.shards`) and, for each, run detection and attribution on that shard's series
only, from the shard's ``covered_until`` minus :data:`~spanprism.attribution.passes.runs.OVERLAP` (everything on
its first pass), writing its results in transactions fenced by the lease; a background thread renews the lease
meanwhile. A shard is due when its last pass finished before ``due_before`` (``--once``: before the worker
started; looping: ``worker_every_s`` ago). With no workers configured, ``serve``'s scheduler leader runs the passes
as before; with workers, set ``SPANPRISM_SCHEDULER_ENABLED=false`` on the ``serve`` replicas.

A *nightly* round (``kind="nightly"``, for one nightly slot: the latest firing of ``nightly_cron``) claims the shards
not yet re-detected for that slot and re-detects each one's series from the stored rollups over
``nightly_lookback_days`` (all history when 0), as the scheduler's nightly pass does; the slot is recorded on the
lease, so each shard's nightly runs once per slot whatever the number of workers. A looping worker runs the slot's
nightly round after an incremental round once the slot has come.

Every round that passed (or tried) a shard is recorded in ``job_runs`` (trigger ``worker``, kind ``incremental`` or
``nightly``; the worker and its shards in ``counts``), so ``/api/v1/jobs`` and ``spanprism jobs`` list the
workers' passes beside the scheduler's. Such rows never start a scheduler's incremental window (they do not cover
every series: ``counts.covering`` is unset). A running row records its shards so far and ``counts.progress_at``
after each shard. A worker killed mid-round leaves its row ``running``: the worker that takes over its expired lease
marks it ``interrupted``, and when no lease is left to take over (it died between shards, or after its last one),
any worker starting a round marks it once it has held no lease and made no progress for a lease period.
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
from spanprism.attribution.passes import runs, shards
from spanprism.attribution.passes.runs import OVERLAP, attribute
from spanprism.attribution.store import calls
from spanprism.attribution.store.calls import UNROLLED_MARGIN
from spanprism.attribution.store.rollups import refresh_series_rollups, register_series
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

    kind: str = "incremental"
    worker: str = ""
    run_id: str | None = None  # its ``job_runs`` row (None: no shard was claimed, nothing recorded)
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
        self.fresh_until: datetime | None = None  # how far the series registry is fresh (None: not yet)
        self._refreshed = False
        self._nightly_slot: datetime | None = None  # the slot of the round running (None: an incremental round)

    # --- one round ------------------------------------------------------------------------------------------------

    def run_round(self, *, due_before: datetime | None = None, nightly_slot: datetime | None = None,
                  stop: threading.Event | None = None) -> RoundSummary:  # fmt: skip
        """Pass every shard that is due (incremental: last finished before ``due_before``; nightly: not yet
        re-detected for ``nightly_slot``) and that no live worker holds; returns when none is left (or on ``stop``).
        A round that claimed a shard is recorded in ``job_runs``."""
        t0 = time.perf_counter()
        summary = RoundSummary(kind="nightly" if nightly_slot is not None else "incremental", worker=self.owner)
        record: dict[str, Any] | None = None
        self._refreshed = False  # the series registry is refreshed once a round, before its first shard
        self._nightly_slot = nightly_slot
        with self.db.state.write() as cur:
            shards.ensure_shards(cur)
        self._reap_quiet()
        stopped: str | None = None
        try:
            while stop is None or not stop.is_set():
                with self.db.state.write() as cur:
                    lease = shards.claim(cur, self.owner, now=_now(), lease_s=self.lease_s, due_before=due_before,
                                         nightly_slot=nightly_slot)  # fmt: skip
                if lease is None:
                    break
                if lease.taken_from is not None and lease.taken_from != self.owner:
                    self._reap(lease)
                if record is None:
                    record = self._record_start(summary, nightly_slot)
                self._one(lease, summary)
                self._record_progress(record, summary)
        except BaseException as exc:  # the state database went away mid-round, or the process is stopping
            stopped = f"the round stopped: {type(exc).__name__}: {exc}"
            raise
        finally:
            summary.seconds = round(time.perf_counter() - t0, 2)
            if record is not None:
                self._record_end(record, summary, nightly_slot, stopped)
        return summary

    def _reap(self, lease: shards.Lease) -> None:
        """The previous holder's lease expired: its round, if recorded ``running``, is marked ``interrupted`` (a
        SIGKILLed worker records nothing itself)."""
        reason = (f"worker {lease.taken_from} stopped renewing its lease of shard {lease.shard}; "
                  f"taken over by {self.owner}")  # fmt: skip
        try:
            with self.db.state.write() as cur:
                runs.mark_worker_interrupted(cur, str(lease.taken_from), reason=reason, now=_now())
        except Exception:  # bookkeeping only: the shard's pass goes on
            log.warning("could not mark the rounds of worker %s interrupted", lease.taken_from, exc_info=True)

    def _reap_quiet(self) -> None:
        """Rounds of other workers left ``running`` with no lease and no progress for a lease period are marked
        ``interrupted``: their worker died between shards or after its last one (no lease left to take over)."""
        now = _now()
        try:
            with self.db.state.write() as cur:
                # A holder of an expired lease died mid-shard: the takeover of that lease marks its round.
                live = shards.holders(cur) | {self.owner}
                runs.mark_stale_worker_rounds(
                    cur, live=live, quiet_since=now - timedelta(seconds=self.lease_s), now=now,
                    reason=f"the worker held no lease and recorded no progress for {self.lease_s:g} s; "
                           f"found by {self.owner}",
                )  # fmt: skip
        except Exception:  # bookkeeping only: the round goes on
            log.warning("could not mark quiet worker rounds interrupted", exc_info=True)

    def _record_progress(self, record: dict[str, Any], summary: RoundSummary) -> None:
        """After each finished shard: the shards so far and when (a round that stops progressing without a lease
        is a dead worker's, :meth:`_reap_quiet`)."""
        record["counts"].update(shards=list(summary.shards), progress_at=_now().isoformat())
        try:
            with self.db.state.write() as cur:
                runs.save_run(cur, record)
        except Exception:  # bookkeeping only: the end-of-round record follows
            log.warning("could not record the progress of worker run %s", record["id"], exc_info=True)

    def _record_start(self, summary: RoundSummary, nightly_slot: datetime | None) -> dict[str, Any]:
        record = runs.new_run(summary.kind, "worker")
        record.update(status="running", started_at=record["queued_at"],
                      counts={"worker": self.owner, "shards": [], "nightly_slot": _iso(nightly_slot)})  # fmt: skip
        summary.run_id = record["id"]
        with self.db.state.write() as cur:
            runs.save_run(cur, record)
        return record

    def _record_end(self, record: dict[str, Any], summary: RoundSummary, nightly_slot: datetime | None,
                    stopped: str | None = None) -> None:  # fmt: skip
        """The round's outcome: ``failed`` when a shard failed (the others' results are stored and counted) or the
        round stopped on an error."""
        errors = [f"shard {s}: {e}" for s, e in sorted(summary.failed.items())] + ([stopped] if stopped else [])
        record.update(
            status="failed" if errors else "succeeded", finished_at=_now(), window_end=self.fresh_until,
            error="; ".join(errors) or None,
            counts={"worker": self.owner, "shards": summary.shards, "lost_shards": summary.lost,
                    "failed_shards": sorted(summary.failed), "series": summary.series,
                    "regressions": summary.regressions, "attributed": summary.attributed,
                    "nightly_slot": _iso(nightly_slot), "seconds": summary.seconds},
        )  # fmt: skip
        try:
            with self.db.state.write() as cur:
                runs.save_run(cur, record)
        except Exception:  # the results are stored and the leases finished; only the record is missing
            log.warning("could not record worker run %s", record["id"], exc_info=True)

    def _one(self, lease: shards.Lease, summary: RoundSummary) -> None:
        with self._renewing(lease) as lost:
            try:
                with self.db.writer() as con:
                    if not self._refreshed:
                        self._refresh(con)
                        self._refreshed = True
                    end = self.fresh_until
                    keys = shards.keys_of(lease.shard, _series_keys(con))
                    if keys:
                        self._refresh_shard(con, lease.shard, keys)
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
        # A pass over all history (a nightly, or a shard's first pass) stands for the current nightly slot.
        slot = lease.nightly_slot
        if slot is None and lease.covered_until is None:
            slot = nightly_slot(self.settings)
        with self.db.state.write() as cur:
            finished = not lost.is_set() and shards.finish(cur, lease, now=_now(), covered_until=end,
                                                            nightly_slot=slot)  # fmt: skip
        if not finished:
            summary.lost.append(lease.shard)
            return
        summary.shards.append(lease.shard)
        summary.series += len(keys)
        summary.regressions += int(counts.get("regressions_open", 0)) + int(counts.get("regressions_resolved", 0))
        summary.attributed += int(counts.get("attributed", 0))

    def _refresh(self, con: Any) -> None:
        """Bring the series registry (``series``: every series' key and span) up to the newest call, from where it
        was minus an hour (all history the first time): a cheap GROUP BY in ClickHouse, which every shard's key list
        needs. The rollups themselves are refreshed per claimed shard (:meth:`_refresh_shard`)."""
        span = calls.data_span(con)
        if span is None:
            return
        since = _EPOCH if self.fresh_until is None else self.fresh_until - OVERLAP
        register_series(con, since, as_utc(span[1]))
        self.fresh_until = as_utc(span[1])

    def _refresh_shard(self, con: Any, shard: int, keys: list[str]) -> None:
        """Bring the cached rollups of one shard's series up to the newest call: from where this worker's cache of
        the shard was fresh, minus an hour (all history the first time it passes the shard), plus the time span of
        every batch written since its last refresh (late calls); a nightly round with ``nightly_lookback_days``
        rebuilds that span, picking up late calls as the scheduler's nightly does. Other shards' rollups are not
        computed: N workers share the rollup work instead of each doing all of it."""
        row = con.execute("SELECT fresh_until, refreshed_at FROM shard_rollups WHERE shard = ?", [shard]).fetchall()
        since = as_utc(row[0][0]) - OVERLAP if row else None
        written_since = as_utc(row[0][1]) - UNROLLED_MARGIN if row else None
        lookback = self.settings.nightly_lookback_days
        if self._nightly_slot is not None and lookback > 0 and self.fresh_until is not None:
            start = self.fresh_until - timedelta(days=lookback)
            since = start if since is None else min(since, start)
        started = _now()
        refreshed = refresh_series_rollups(con, keys, since, written_since=written_since)
        if refreshed.windows:
            con.execute("INSERT OR REPLACE INTO shard_rollups VALUES (?, ?, ?)",
                        [shard, refreshed.windows[-1][1], started])  # fmt: skip

    def _pass(self, con: Any, lease: shards.Lease, keys: list[str]) -> dict[str, Any]:
        since = lease.covered_until - OVERLAP if lease.covered_until else None
        if lease.nightly_slot is not None:  # re-detect the lookback (all history when 0) from the stored rollups
            lookback = self.settings.nightly_lookback_days
            since = self.fresh_until - timedelta(days=lookback) if lookback > 0 and self.fresh_until else None

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

    def run_forever(self, stop: threading.Event, *, every_s: float, nightly: bool = True) -> None:
        """Rounds until ``stop``: each passes the shards last passed more than ``every_s`` ago, then (``nightly``)
        the shards not yet re-detected for the current nightly slot."""
        while not stop.is_set():
            done = [self.run_round(due_before=_now() - timedelta(seconds=every_s), stop=stop)]
            if nightly and not stop.is_set():
                done.append(self.run_round(nightly_slot=nightly_slot(self.settings), stop=stop))
            for summary in done:
                if summary.shards or summary.failed:
                    log.info("worker %s passed shards %s (%s, %d series) in %.1f s; failed %s", self.owner,
                             summary.shards, summary.kind, summary.series, summary.seconds,
                             sorted(summary.failed))  # fmt: skip
            stop.wait(min(5.0, max(every_s / 10, 0.5)))  # then look for due shards (or a dead worker's) again


def nightly_slot(settings: Settings, now: datetime | None = None) -> datetime:
    """The current nightly slot: the latest firing of ``nightly_cron`` (in ``nightly_timezone``) at or before
    ``now``, as a UTC time. Every worker computes the same slot, so a shard's nightly runs once per slot."""
    from spanprism.api.services.scheduler import nightly_trigger

    now = now or _now()
    trigger = nightly_trigger(settings.nightly_cron, settings.nightly_timezone)
    t, slot = now - timedelta(days=32), None  # a monthly cron fires at least once in 32 days
    while (fire := trigger.get_next_fire_time(None, t)) is not None and fire <= now:
        slot, t = fire, fire + timedelta(seconds=1)
    return (slot or now - timedelta(days=32)).astimezone(UTC)


def _series_keys(con: Any) -> list[str]:
    return [r[0] for r in con.execute("SELECT series_key FROM series").fetchall()]


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
