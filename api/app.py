"""The FastAPI application: ``create_app(settings)`` builds it; nothing opens a database at import.

One port serves the OTLP/HTTP receiver (``POST /v1/traces``), the REST API under ``/api/v1`` and the operations
endpoints (``/healthz``, ``/readyz``, ``/metrics``) and the web pages (``api/web``). The lifespan opens (and
migrates) the DuckDB file, then starts
the background services (ingest writer, scheduler, alert outbox) and stops them in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from spanprism.api.hot_reads import HotReads
from spanprism.api.metrics import Metrics
from spanprism.api.routers import alerts, baselines, calls, health, jobs, keys, otlp, quarantine, regressions, series
from spanprism.api.routers import ingest as ingest_routes
from spanprism.api.services.lifecycle import Service, ServiceFactory
from spanprism.api.settings import Settings
from spanprism.api.storage.calls_engine import calls_engine
from spanprism.api.storage.database import Database
from spanprism.api.web import mount as mount_pages
from spanprism.attribution.store.panels import open_regressions_by_label

log = logging.getLogger("spanprism.app")

API_PREFIX = "/api/v1"


def _service_factories() -> list[ServiceFactory]:
    """The background services, in start order (imported here so a bare app import stays light)."""
    from spanprism.api.alerts.worker import alert_worker
    from spanprism.api.services.ingest import ingest_service
    from spanprism.api.services.scheduler import job_runner_service, scheduler_service
    from spanprism.api.services.source import source_service

    # The attribution runner (app.state.job_runner) before its scheduler; both before the alerts that consume it.
    # The OTLP ingest writer first: it is stopped last, after the jobs that read what it stores.
    return [ingest_service, source_service, job_runner_service, scheduler_service, alert_worker]


def _open_by_label(app: FastAPI) -> dict[str, float]:
    database: Database | None = getattr(app.state, "db", None)
    if database is None:  # scraped before the lifespan opened the file
        return {}
    with database.state.read() as cur:  # regressions are results: where the state lives
        return open_regressions_by_label(cur)


def create_app(
    settings: Settings,
    *,
    database: Database | None = None,
    services: Sequence[ServiceFactory] | None = None,
) -> FastAPI:
    """Build the app. ``database`` lets a caller own the file; ``services`` replaces the default background set."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with calls_engine(settings.clickhouse_url):  # llm_calls in ClickHouse when configured, for every service
            async with _serving(app):
                yield

    @asynccontextmanager
    async def _serving(app: FastAPI) -> AsyncIterator[None]:
        db = database or Database(settings.db, state_url=settings.state_url)
        app.state.db = db
        started: list[Service] = []
        try:
            for factory in _service_factories() if services is None else services:
                service = factory(settings, db, metrics, app.state)
                service.start()
                started.append(service)
            log.info("spanprism serving", extra={"db": str(db.path), "services": len(started)})
            yield
        finally:
            for service in reversed(started):
                try:
                    service.stop()
                except Exception:  # one failing stop must not keep the others (and the DB) open
                    log.exception("stopping a service failed")
            if database is None:
                db.close()

    app = FastAPI(
        title="spanprism",
        version="1.0",
        summary="Explains LLM latency regressions: OTLP/HTTP receiver and REST API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    metrics.gauge_callback("spanprism_open_regressions", "Open regressions by label.", "label",
                           lambda: _open_by_label(app))  # fmt: skip
    app.include_router(health.router)
    app.include_router(otlp.router)  # /v1/traces: the OTLP/HTTP path, no API prefix
    app.include_router(ingest_routes.router, prefix=API_PREFIX)
    app.include_router(quarantine.router, prefix=API_PREFIX)
    app.include_router(keys.router, prefix=API_PREFIX)
    app.include_router(jobs.router, prefix=API_PREFIX)
    for read_router in (series.router, baselines.router, regressions.router, calls.router):
        app.include_router(read_router, prefix=API_PREFIX)
    app.include_router(alerts.router, prefix=API_PREFIX)
    mount_pages(app)  # the web pages: /, /series/…, /regressions/…, /quarantine, /login
    app.add_middleware(HotReads)  # repeated dashboard lists skip routing and dependency solving (api/hot_reads.py)
    return app
