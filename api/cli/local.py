"""The CLI's work done in this process, on the DuckDB file: the :class:`~spanprism.api.cli.backend.Backend` of a CLI
that may open the file.

It holds the file as the server does (a :class:`~spanprism.api.storage.database.Database`: read cursors, writes
under one lock) and calls the product functions the server's routers call, so the two sides differ only in where
they run. Answers go through pydantic's JSON encoder, the one FastAPI answers with, so they match the API's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic_core import to_jsonable_python

from spanprism.api.alerts.config import sync_from_env
from spanprism.api.alerts.destinations import list_destinations
from spanprism.api.alerts.outbox import list_outbox
from spanprism.api.alerts.rules import list_rules
from spanprism.api.alerts.worker import Deliverer, enqueue_pass
from spanprism.api.cli.backend import Backend, Progress
from spanprism.api.metrics import Metrics
from spanprism.api.security import create_key, list_keys, revoke_key
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database
from spanprism.attribution.classifier.model import load_default
from spanprism.attribution.passes import runs
from spanprism.attribution.passes.label_pass import find_regression, record_feedback, regression_features
from spanprism.attribution.store.records import list_regressions
from spanprism.ingest.pipeline import IngestSummary, ingest_paths


class LocalBackend(Backend):
    """Opens (and migrates) the DuckDB file; raises ``DatabaseLockedError`` when another process holds it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.location = str(settings.db)
        self.db = Database(settings.db, state_url=settings.state_url)
        self._alerts_synced = False

    def close(self) -> None:
        self.db.close()

    def ingest(self, paths: list[str], *, workers: int, progress: Progress | None = None) -> IngestSummary:
        s = self.settings
        with self.db.writer() as cur:
            return ingest_paths(cur, paths, workers=workers, tenant_attribute=s.tenant_attribute,
                                chunk_bytes=s.chunk_bytes, batch_rows=s.ingest_batch_rows, limits=s.ingest_limits(),
                                progress=progress)  # fmt: skip

    def run_pass(self, kind: str, *, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
        with self.db.writer() as cur:
            runs.mark_interrupted(cur)  # this process owns the file: any run still "running" is dead
            record = runs.new_run(kind, "cli", since=since, until=until)
            final = runs.execute(cur, record, classifier=self.settings.classifier,
                                 lookback_days=self.settings.nightly_lookback_days,
                                 state=self.db.state.write if self.db.state.shared else None)  # fmt: skip
        return to_jsonable_python(final)

    def list_runs(self, *, kind: str | None, status: str | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        with self.db.state.read() as cur:
            page, total = runs.list_runs(cur, kind=kind, status=status, limit=limit)
        return to_jsonable_python(page), total

    def regressions(self, *, label: str | None, status: str | None, since: datetime | None,
                    until: datetime | None, withheld: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        with self.db.state.read() as cur:
            return list_regressions(cur, label=label, status=status, since=since, until=until, withheld=withheld)

    def regression(self, ref: str) -> dict[str, Any] | None:
        with self.db.state.read() as cur:
            try:
                return to_jsonable_python(find_regression(cur, ref))
            except LookupError:
                return None

    def label(self, ref: str, *, label: str, reason: str | None, note: str | None) -> str | None:
        # As POST /regressions/{id}/feedback: features first, outside the write lock; a label without
        # features (too few calls, an artifact that does not load) is still worth keeping.
        with self.db.read() as cur, self.db.state.read() as rc:
            try:
                regression_id = find_regression(rc, ref)["id"]
            except LookupError:
                return None
            try:
                features = regression_features(cur, load_default(self.settings.classifier), regression_id,
                                               results=rc)  # fmt: skip
            except ValueError:
                features = None
        with self.db.state.write() as cur:
            record_feedback(cur, regression_id, label=label, reason=reason, note=note, features=features)
        return regression_id

    def create_key(self, *, name: str, scopes: frozenset[str]) -> dict[str, Any]:
        with self.db.state.write() as cur:
            key_id, plain = create_key(cur, name=name, scopes=scopes)
            row = next(k for k in list_keys(cur) if k["id"] == key_id)
        return to_jsonable_python({**row, "key": plain})

    def list_keys(self) -> list[dict[str, Any]]:
        with self.db.state.read() as cur:
            return to_jsonable_python(list_keys(cur))

    def revoke_key(self, key_id: str) -> bool:
        with self.db.state.write() as cur:
            return revoke_key(cur, key_id)

    def _alerts(self) -> Database:
        """The file with ``$SPANPRISM_CONFIG``'s ``[alerts]`` applied first, as ``serve`` does at start."""
        if not self._alerts_synced:
            sync_from_env(self.db)  # raises ConfigError on a bad config: nothing is applied then
            self._alerts_synced = True
        return self.db

    def alert_config(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self._alerts().state.read() as cur:
            dests = [d.public() for d in list_destinations(cur)]
            rules = [r.public() for r in list_rules(cur)]
        return to_jsonable_python(dests), to_jsonable_python(rules)

    def outbox(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        with self._alerts().state.read() as cur:
            return to_jsonable_python(list_outbox(cur, status=status, limit=limit))

    def test_destination(self, ref: str) -> dict[str, Any] | None:
        from spanprism.api.routers.alerts import send_sample  # the web stack only for the command that needs it

        try:
            return send_sample(self._alerts(), self.settings, ref)
        except LookupError:
            return None

    def deliver_alerts(self) -> tuple[int, dict[str, int]] | None:
        queued = enqueue_pass(self._alerts())
        deliverer = Deliverer(self.db, self.settings, Metrics())
        try:
            return queued, deliverer.deliver_due()
        finally:
            deliverer.close()
