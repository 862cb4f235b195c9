"""The alert outbox worker: enqueue after every attribution pass, deliver due rows, retry with backoff.

A thread with a stop Event. Each wake-up (the poll interval, an attribution pass's ``after_pass`` callback, or a
change of ``db.generation``) enqueues when the stored regressions may have changed, then delivers due rows. The
write lock is taken only for the short bookkeeping transactions, never across an HTTP call.

With the state in PostgreSQL several replicas deliver from one outbox: each row is *claimed* (``SELECT … FOR
UPDATE SKIP LOCKED``) in a transaction that stays open across its one HTTP attempt and commits the outcome, so
exactly one deliverer sends it; a deliverer that dies mid-attempt rolls back and the row is due again.
"""

from __future__ import annotations

import logging
import random
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from spanprism.api.alerts import outbox
from spanprism.api.alerts.delivery import Outcome, backoff_s, install_log_redaction, prepare, send
from spanprism.api.alerts.destinations import load_destination
from spanprism.api.alerts.render import Links
from spanprism.api.alerts.rules import list_rules
from spanprism.api.metrics import Metrics
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database
from spanprism.attribution.store.records import list_regressions
from spanprism.models.state import StateCursor

log = logging.getLogger("spanprism.alerts")


def enqueue_pass(db: Database) -> int:
    """Queue triggers/resolves for the stored regressions (reads without the lock, inserts in one transaction)."""
    with db.state.read() as cur:  # the regressions live with the outbox (the DuckDB file, or PostgreSQL)
        records = list_regressions(cur, detail=True, min_change_pct=float("-inf"), withheld=True)  # plan() decides
        rules = list_rules(cur, enabled_only=True)
    with db.state.write() as cur:  # even with no records: triggered regressions that vanished still need a resolve
        return outbox.enqueue(cur, records, rules)


@dataclass
class Deliverer:
    """Delivers due outbox rows of one database with one HTTP client."""

    db: Database
    settings: Settings
    metrics: Metrics
    client: httpx.Client = field(init=False)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        install_log_redaction()
        self.client = httpx.Client(timeout=self.settings.alert_timeout_s, follow_redirects=False,
                                   headers={"user-agent": "spanprism-alerts/1.0"})  # fmt: skip
        self.links = Links(self.settings.public_url, self.settings.trace_url_template)

    def close(self) -> None:
        self.client.close()

    def deliver_due(self, limit: int = 100, stop: threading.Event | None = None) -> dict[str, int]:
        """One delivery round: settle blocked rows, then triggers, then the resolves they unlock (``stop`` ends it
        between rows, so a shutdown waits for at most one HTTP call)."""
        counts = {"sent": 0, "retry": 0, "failed": 0, "expired": 0}
        with self.db.state.write() as cur:
            counts["failed"] += outbox.settle_blocked(cur, datetime.now(UTC))
        if self.db.state.shared:
            return self._deliver_claimed(counts, limit, stop)
        tried: set[str] = set()
        for _ in range(2):  # a trigger sent in the first round makes its resolve due in the second
            with self.db.state.read() as cur:
                rows = [r for r in outbox.due(cur, datetime.now(UTC), limit) if r.id not in tried]
            if not rows:
                break
            for row in rows:
                tried.add(row.id)  # one attempt per row and round, however short its backoff
                if stop is not None and stop.is_set():
                    return counts
                counts[self.deliver(row)] += 1
        return counts

    def _deliver_claimed(self, counts: dict[str, int], limit: int, stop: threading.Event | None) -> dict[str, int]:
        """Shared outbox: claim one row at a time (locked, others skip it), attempt it, commit the outcome."""
        tried: set[str] = set()
        for _ in range(2 * limit):
            if stop is not None and stop.is_set():
                break
            with self.db.state.write() as cur:
                rows = outbox.due(cur, datetime.now(UTC), 1, claim=True)
                if not rows or rows[0].id in tried:  # nothing due, or only a row whose retry came round already
                    break
                tried.add(rows[0].id)
                counts[self.deliver(rows[0], cur)] += 1
        return counts

    def deliver(self, row: outbox.Row, claimed: StateCursor | None = None) -> str:
        """Attempt one row and record the result; returns the outcome name. ``claimed``: the transaction that
        holds the row's lock (shared outbox), where the outcome is recorded."""
        with self._state(claimed, write=False) as cur:
            dest = load_destination(cur, row.destination_id)
        now = datetime.now(UTC)
        deadline = row.created_at + timedelta(seconds=self.settings.alert_max_age_s)
        if dest is None:
            return self._final(row, "failed", "destination deleted", claimed, kind="unknown", attempted=False)
        if now >= deadline:
            return self._final(row, "expired", "gave up: older than alert_max_age_s", claimed, kind=dest.kind,
                               attempted=False)  # fmt: skip
        try:
            request = prepare(dest, row.payload, row.event, row.id, self.links)
        except (KeyError, ValueError) as exc:  # a broken row must not block the rows behind it forever
            return self._final(row, "failed", f"cannot build the request: {type(exc).__name__}", claimed,
                               kind=dest.kind, attempted=False)  # fmt: skip
        return self._record(row, dest.kind, send(self.client, request, dest), deadline, claimed)

    def _state(self, claimed: StateCursor | None, *, write: bool) -> AbstractContextManager[StateCursor]:
        """The claiming transaction when there is one, else a unit of work of its own."""
        if claimed is not None:
            return nullcontext(claimed)
        return self.db.state.write() if write else self.db.state.read()

    def _record(self, row: outbox.Row, kind: str, outcome: Outcome, deadline: datetime,
                claimed: StateCursor | None) -> str:  # fmt: skip
        now = datetime.now(UTC)
        if outcome.status == "sent":
            with self._state(claimed, write=True) as cur:
                outbox.mark_sent(cur, row.id, now)
            self._count(kind, "sent", row)
            return "sent"
        if outcome.status == "failed":
            return self._final(row, "failed", outcome.error, claimed, kind=kind, attempted=True)
        delay = backoff_s(row.attempts + 1, self.settings.alert_backoff_base_s, self.settings.alert_backoff_max_s,
                          self.rng)  # fmt: skip
        if outcome.retry_after_s is not None:
            delay = max(delay, outcome.retry_after_s)
        next_at = now + timedelta(seconds=delay)
        if next_at >= deadline:
            return self._final(row, "expired", f"gave up after: {outcome.error}", claimed, kind=kind,
                               attempted=True)  # fmt: skip
        with self._state(claimed, write=True) as cur:
            outbox.mark_retry(cur, row.id, next_at, outcome.error)
        self._count(kind, "retry", row, error=outcome.error, delay_s=round(delay, 3))
        return "retry"

    def _final(self, row: outbox.Row, status: str, error: str | None, claimed: StateCursor | None, *, kind: str,
               attempted: bool) -> str:  # fmt: skip
        with self._state(claimed, write=True) as cur:
            outbox.mark_final(cur, row.id, status, error, attempted=attempted)
        self._count(kind, status, row, error=error)
        return status

    def _count(self, kind: str, outcome: str, row: outbox.Row, **extra: Any) -> None:
        self.metrics.alerts.labels(kind, outcome).inc()
        level = logging.INFO if outcome in ("sent", "retry") else logging.WARNING
        log.log(level, "alert %s", outcome, extra={"delivery": row.id, "regression": row.regression_id,
                                                   "destination": row.destination_id, "event": row.event,
                                                   "kind": kind, **extra})  # fmt: skip


class AlertWorker:
    """The outbox service: a thread that enqueues on new attribution results and delivers due rows."""

    def __init__(self, settings: Settings, db: Database, metrics: Metrics, app_state: Any) -> None:
        self.settings, self.db, self.metrics, self.app_state = settings, db, metrics, app_state
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._dirty = True  # enqueue once at start: passes may have run while we were down
        self._seen_generation = db.generation
        self._thread: threading.Thread | None = None
        self.deliverer: Deliverer | None = None

    def start(self) -> None:
        from spanprism.api.alerts.config import sync_from_env

        sync_from_env(self.db)
        runner = getattr(self.app_state, "job_runner", None)
        if runner is not None and hasattr(runner, "after_pass"):
            runner.after_pass.append(self.after_pass)
        self.app_state.alert_worker = self  # the router and tests find the running worker here
        self.deliverer = Deliverer(self.db, self.settings, self.metrics)
        self._thread = threading.Thread(target=self._run, name="spanprism-alerts", daemon=True)
        self._thread.start()

    def after_pass(self, summary: dict) -> None:
        """JobRunner callback: new regressions may exist; enqueue and deliver now instead of at the next poll."""
        self._dirty = True
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.settings.alert_timeout_s + 5)
        if self.deliverer is not None:
            self.deliverer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad round (e.g. a DB hiccup) must not end alerting; the next poll retries
                log.exception("alert outbox round failed")
            self._wake.wait(self.settings.alert_poll_s)
            self._wake.clear()

    def tick(self) -> dict[str, int]:
        """Enqueue if anything changed, then deliver what is due."""
        assert self.deliverer is not None
        generation = self.db.generation
        if self._dirty or generation != self._seen_generation:
            self._dirty, self._seen_generation = False, generation
            enqueue_pass(self.db)
        return self.deliverer.deliver_due(stop=self._stop)


def alert_worker(settings: Settings, db: Database, metrics: Metrics, app_state: Any) -> AlertWorker:
    """The service factory listed in ``spanprism.api.app._service_factories``."""
    return AlertWorker(settings, db, metrics, app_state)
