"""``serve``'s follower of the Collector's ``otel_traces`` table (``source`` mode inside the server).

With ``clickhouse_url`` and ``clickhouse_source_every_s`` > 0 a thread runs :func:`spanprism.ingest.otel_traces.follow`
every that many seconds, holding the file's write lock for at most ``_SLICES_PER_TURN`` slices at a time (the OTLP
writer and the passes take turns with it), until the pass has caught up. Otherwise it does nothing. A failing pass is
logged and retried at the next turn: the watermark only moves after a stored slice, so nothing is lost.
"""

from __future__ import annotations

import logging
import threading

from spanprism.api.metrics import Metrics
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database
from spanprism.ingest.otel_traces import Part, follow
from spanprism.models.clickhouse import bound

log = logging.getLogger("spanprism.ingest")
_SLICES_PER_TURN = 12


class SourceFollower:
    """The thread following ``otel_traces`` (started and stopped by the app's lifespan)."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _turn(self) -> bool:
        """One bounded piece of a pass; True when there may be more to read right away."""
        store = bound()
        if store is None:
            return False
        s = self.settings
        with self.db.writer() as cur:
            run = follow(cur, store, table=s.clickhouse_source_table, late_s=s.clickhouse_source_late_s,
                         max_slices=_SLICES_PER_TURN, tenant_attribute=s.tenant_attribute,
                         limits=s.ingest_limits(), part=Part.parse(s.clickhouse_source_part))  # fmt: skip
        if run.calls_stored:
            self.db.bump_listing()
        return run.slices == _SLICES_PER_TURN

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                more = self._turn()
            except Exception:  # a ClickHouse outage must not end the server: the next turn retries
                log.exception("following otel_traces failed")
                more = False
            if not more:
                self._stop.wait(self.settings.clickhouse_source_every_s)

    def start(self) -> None:
        if self.settings.clickhouse_url and self.settings.clickhouse_source_every_s > 0:
            self._thread = threading.Thread(target=self._loop, name="spanprism-source", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


def source_service(settings: Settings, db: Database, metrics: Metrics, state: object) -> SourceFollower:
    """The ServiceFactory of the follower (a no-op without ClickHouse or with ``clickhouse_source_every_s`` 0)."""
    return SourceFollower(settings, db)
