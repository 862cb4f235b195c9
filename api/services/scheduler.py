"""Scheduled attribution: a one-pass-at-a-time ``JobRunner`` and an APScheduler service that feeds it.

``JobRunner`` owns the only thread that runs attribution passes. Anyone (the scheduler, ``POST /api/v1/jobs/
attribute``) calls :meth:`JobRunner.submit`, which queues a run in memory and returns its record at once; the
worker takes runs one by one, runs each under ``db.writer()`` (the process-wide write lock: ingest and alert
writes wait, nothing conflicts) and records it in ``job_runs`` (:mod:`attribution.passes.runs`). Two passes never
overlap, whatever APScheduler does. An identical request already waiting is coalesced into the queued one.

After every pass that did work (``succeeded`` or ``failed`` — a failed pass may have committed detection before
attribution broke; never after ``skipped``), the runner calls ``db.bump_generation()`` (read caches drop their
answers) and then each callable in :attr:`JobRunner.after_pass` with the final run record (a dict as in
:func:`attribution.passes.runs.public` — id, kind, trigger, status, queued/started/finished_at, window_start/end,
counts, error — but with ``datetime`` times). Callbacks run on the runner thread after the write lock is released,
so they may write; a slow one delays the next pass. The alert worker registers one there to enqueue alerts for
new and resolved regressions at once. A callback that raises is logged and does not affect the others.

``SchedulerService`` wraps a ``BackgroundScheduler`` with the incremental interval job and the nightly cron job;
both only submit to the runner. Jobs use ``max_instances=1``, ``coalesce=True`` (a backlog of missed firings
runs once) and ``misfire_grace_time``.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from spanprism.api.metrics import Metrics
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database
from spanprism.attribution.passes import runs

log = logging.getLogger("spanprism.scheduler")

AfterPass = Callable[[dict[str, Any]], None]
_STOP = None


class JobRunner:
    """Runs attribution passes one at a time on a worker thread; see the module docstring for the contract."""

    def __init__(self, db: Database, metrics: Metrics, *, classifier: Path | None = None,
                 lookback_days: float = 0) -> None:  # fmt: skip
        self.db, self.metrics = db, metrics
        self.classifier, self.lookback_days = classifier, lookback_days
        #: Called with the final run record after every pass that did work (succeeded or failed), in order.
        self.after_pass: list[AfterPass] = []
        self.interrupted_at_start = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}  # queued in memory, not started (not in job_runs yet)
        self._current: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None

    def _state_unit(self) -> AbstractContextManager[Any]:
        """Where ``job_runs`` is written: the shared state store, or the file under the process's write lock."""
        return self.db.state.write() if self.db.state.shared else self.db.writer()

    def start(self) -> None:
        """Mark runs a previous process left unfinished as ``interrupted``, then start the worker.

        On shared state another replica's run may be alive: only the scheduler leader marks, when it takes over.
        """
        if not self.db.state.shared:
            with self.db.writer() as cur:
                self.interrupted_at_start = runs.mark_interrupted(cur)
        if self.interrupted_at_start:
            log.warning("marked %d unfinished attribution run(s) interrupted", self.interrupted_at_start)
        self._thread = threading.Thread(target=self._work, name="spanprism-job-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 600.0) -> None:
        """Let a running pass finish (it holds the DB), then record queued runs as ``interrupted``."""
        with self._lock:
            dropped = list(self._pending.values())
            self._pending.clear()
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout_s)
        now = datetime.now(UTC)
        with self._state_unit() as cur:
            for record in dropped:
                runs.save_run(cur, {**record, "status": "interrupted", "finished_at": now,
                                    "error": "the server stopped before the run started"})  # fmt: skip

    def submit(self, kind: str, trigger: str, *, since: datetime | None = None,
               until: datetime | None = None) -> dict[str, Any]:  # fmt: skip
        """Queue a pass; returns its ``queued`` record (an identical request still waiting is returned instead)."""
        record = runs.new_run(kind, trigger, since=since, until=until)
        with self._lock:
            for waiting in self._pending.values():
                same = all(waiting[k] == record[k] for k in ("kind", "window_start", "window_end"))
                if same:
                    return dict(waiting)
            self._pending[record["id"]] = record
        self._queue.put(record)
        return dict(record)

    def get(self, run_id: str) -> dict[str, Any] | None:
        """A run by id: waiting in memory, or stored in ``job_runs``."""
        with self._lock:
            if run_id in self._pending:
                return dict(self._pending[run_id])
            current = self._current
        if current is not None and current["id"] == run_id:
            return dict(current)
        with self.db.state.read() as cur:
            return runs.get_run(cur, run_id)

    def list_runs(self, *, kind: str | None = None, status: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        """Runs newest first (waiting ones, then stored ones); returns (page, total)."""
        with self._lock:
            waiting = [dict(r) for r in self._pending.values()
                       if kind in (None, r["kind"]) and status in (None, "queued")]  # fmt: skip
        waiting.sort(key=lambda r: (r["queued_at"], r["id"]), reverse=True)
        page = waiting[offset : offset + limit]
        with self.db.state.read() as cur:
            stored, total = runs.list_runs(cur, kind=kind, status=status, limit=limit - len(page),
                                           offset=max(0, offset - len(waiting)))  # fmt: skip
        return page + stored, total + len(waiting)

    def idle(self) -> bool:
        """True when nothing is queued or running."""
        with self._lock:
            return not self._pending and self._current is None and self._queue.empty()

    def _work(self) -> None:
        while (record := self._queue.get()) is not _STOP:
            with self._lock:
                if self._pending.pop(record["id"], None) is None:
                    continue  # dropped by stop()
                self._current = {**record, "status": "running"}
            try:
                final = self._run(record)
            finally:
                with self._lock:
                    self._current = None
            self._after(final)

    def _run(self, record: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            state = self.db.state.write if self.db.state.shared else None
            with self.db.writer() as cur:
                final = runs.execute(cur, record, classifier=self.classifier, lookback_days=self.lookback_days,
                                     state=state)  # fmt: skip
        except Exception as exc:  # bookkeeping itself failed (e.g. the file is gone): still a recorded outcome
            log.exception("attribution run %s could not be recorded", record["id"])
            final = {**record, "status": "failed", "finished_at": datetime.now(UTC), "error": str(exc)}
        self.metrics.job_runs.labels(final["kind"], final["status"]).inc()
        if final["status"] != "skipped":
            self.metrics.job_seconds.labels(final["kind"]).observe(time.perf_counter() - t0)
        log.info("attribution run %s %s: %s", final["id"], final["kind"], final["status"])
        return final

    def _after(self, final: dict[str, Any]) -> None:
        if final["status"] not in ("succeeded", "failed"):
            return
        self.db.bump_generation()
        for callback in list(self.after_pass):
            try:
                callback(dict(final))
            except Exception:  # one broken consumer (e.g. alerts) must not stop the others or the runner
                log.exception("after_pass callback %r failed", callback)


_DOW = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_day_of_week(field: str) -> str:
    """A standard crontab day-of-week field (0 or 7 = Sunday) as APScheduler 3.x reads it (0 = Monday).

    Numbers are rewritten as day names, which mean the same in both; names and ``*`` pass through unchanged.
    """
    out: list[str] = []
    for part in field.lower().split(","):
        body, _, step = part.partition("/")
        numeric = re.fullmatch(r"\*|(\d)(?:-(\d))?", body)
        if not numeric or (body == "*" and not step):
            out.append(part)
            continue
        lo = 0 if body == "*" else int(numeric[1])
        hi = 6 if body == "*" else int(numeric[2] or (7 if step else lo))  # "a/n" means a-7/n, as in cron
        if not 0 <= lo <= hi <= 7:
            raise ValueError(f"bad day-of-week {part!r} (0-7, 0 and 7 = Sunday)")
        out.extend(_DOW[d % 7] for d in range(lo, hi + 1, int(step or 1)))
    return ",".join(dict.fromkeys(out))


def nightly_trigger(expr: str, timezone: str) -> CronTrigger:
    """The nightly pass's trigger: a five-field crontab expression with standard day-of-week numbers.

    Restricting both day-of-month and day-of-week is refused: cron ORs the two, APScheduler would AND them.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"a crontab expression has 5 fields, got {len(fields)}: {expr!r}")
    minute, hour, day, month, dow = fields
    if day != "*" and dow != "*":  # cron fires when EITHER matches, APScheduler only when both do: refuse to guess
        raise ValueError(f"restrict day-of-month or day-of-week, not both: {expr!r}")
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=crontab_day_of_week(dow),
                       timezone=ZoneInfo(timezone))  # fmt: skip


#: The advisory lock the scheduler leader holds on shared (PostgreSQL) state ("spanprism leader" as an integer).
LEADER_LOCK = 0x5350_4C44


class Leadership:
    """One scheduler leader among the replicas sharing a state store.

    On the DuckDB file the process is alone (the file lock), so always the leader. On PostgreSQL the leader holds
    a session advisory lock (``pg_try_advisory_lock``) on this process's state session: the lock ends with the
    session, so when the leader dies or loses its connection a standby wins it at its next firing. Taking over
    marks the runs the previous leader left ``running``/``queued`` as ``interrupted``.
    """

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self.session = runner.db.state.session()
        self.leading = self.session is None

    def check(self) -> bool:
        """Whether this process leads now (trying to become the leader when it does not)."""
        if self.session is None:
            return True
        was, self.leading = self.leading, self.session.try_lock(LEADER_LOCK)
        if self.leading and not was:
            with self.runner.db.state.write() as cur:
                self.runner.interrupted_at_start = runs.mark_interrupted(cur)
            log.warning("this replica is now the scheduler leader (%d unfinished run(s) marked interrupted)",
                        self.runner.interrupted_at_start)  # fmt: skip
        elif was and not self.leading:
            log.warning("this replica lost the scheduler leadership")
        return self.leading

    def release(self) -> None:
        if self.session is not None and self.leading:
            self.session.unlock(LEADER_LOCK)
            self.leading = False


class SchedulerService:
    """APScheduler's background scheduler with the incremental and nightly jobs; each firing submits one run
    on the leader (:class:`Leadership`) only."""

    def __init__(self, settings: Settings, runner: JobRunner) -> None:
        self.settings, self.runner = settings, runner
        self.leader = Leadership(runner)
        # Build the triggers now so a bad cron expression or time zone fails at start, not at 2 am.
        self.interval = IntervalTrigger(seconds=settings.incremental_minutes * 60, timezone=UTC)
        self.nightly = nightly_trigger(settings.nightly_cron, settings.nightly_timezone)
        self.scheduler = BackgroundScheduler(timezone=UTC, job_defaults={
            "max_instances": 1, "coalesce": True, "misfire_grace_time": settings.misfire_grace_s})  # fmt: skip

    def start(self) -> None:
        """Add both jobs and start the scheduler; catch up at once when the last process died mid-run."""
        if not self.settings.scheduler_enabled:
            return
        self.scheduler.add_job(self._submit, self.interval, args=["incremental"], id="incremental")
        self.scheduler.add_job(self._submit, self.nightly, args=["nightly"], id="nightly")
        self.scheduler.start()
        if self.leader.check() and self.runner.interrupted_at_start:
            self._submit("incremental")

    def stop(self) -> None:
        """Stop firing and hand the leadership on (a pass already submitted is the runner's business)."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.leader.release()

    def _submit(self, kind: str) -> None:
        if self.leader.check():
            self.runner.submit(kind, "scheduler")


def job_runner_service(settings: Settings, db: Database, metrics: Metrics, app_state: Any) -> JobRunner:
    """Service factory: the runner, also kept on ``app.state.job_runner`` for routers and other services."""
    runner = JobRunner(db, metrics, classifier=settings.classifier, lookback_days=settings.nightly_lookback_days)
    app_state.job_runner = runner
    return runner


def scheduler_service(settings: Settings, db: Database, metrics: Metrics, app_state: Any) -> SchedulerService:
    """Service factory: the scheduler feeding ``app.state.job_runner`` (build the runner first)."""
    service = SchedulerService(settings, app_state.job_runner)
    app_state.job_scheduler = service
    return service
