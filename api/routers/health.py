"""Operations: ``/healthz`` (alive), ``/readyz`` (DB open, schema current, ingest writer moving), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spanprism.api.deps import DbDep, MetricsDep, SettingsDep
from spanprism.api.storage import connect as dbmod

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database is open, its schema is current and the ingest writer is not stuck",
            responses={503: {"description": "not ready"}})  # fmt: skip
def readyz(request: Request, database: DbDep, settings: SettingsDep) -> JSONResponse:
    ingest = getattr(request.app.state, "ingest", None)
    stalled = ingest.stalled_s() if ingest is not None else 0.0
    if stalled > settings.ready_stall_s:  # e.g. the write lock held by something that does not finish
        return JSONResponse({"status": "stalled", "reason": f"{ingest.depth} spans have waited {stalled:.0f} s "
                             "for the ingest writer"}, status_code=503)  # fmt: skip
    try:
        with database.read() as cur:
            row = cur.execute("SELECT version_num FROM alembic_version").fetchone()
    except Exception as exc:  # any DB failure means "not ready", with the reason
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
    current, head = (row[0] if row else None), dbmod.head_revision()
    if current != head:
        return JSONResponse({"status": "migrating", "revision": current, "head": head}, status_code=503)
    return JSONResponse({"status": "ready", "revision": current})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
