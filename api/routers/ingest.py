"""Export-file upload (``POST /ingest``) and the ingest batch log (``GET /ingest/batches``).

An upload is the raw file as the request body (any format ``spanprism ingest`` reads: OTLP JSON lines or
document, protobuf, length-prefixed, gzip/zstd), streamed to a temporary file — never held whole in memory —
then ingested by the same pipeline as the CLI, under the write lock. That is how ``spanprism ingest`` reaches
the DuckDB file while ``serve`` owns it.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from spanprism.api.deps import DbDep, IngestAuth, MetricsDep, ReadAuth, SettingsDep
from spanprism.api.routers.otlp import read_body_to
from spanprism.api.schemas import PagingDep, Since, Until, window
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database
from spanprism.attribution.store.calls import batches_span
from spanprism.attribution.store.rollups import register_series
from spanprism.ingest.decode import BodyTooLarge
from spanprism.ingest.inflate import check_inflated_size
from spanprism.ingest.load import BatchCounts, store_batch
from spanprism.ingest.pipeline import IngestSummary, ingest_paths
from spanprism.ingest.records import Batch

router = APIRouter(prefix="/ingest", tags=["ingest"])


class IngestCounts(BaseModel):
    """What was stored from some input: the counts an upload and a batch row share."""

    spans_seen: int
    calls_stored: int
    duplicates: int
    non_llm_skipped: int
    quarantined: int
    conventions: dict[str, int]


class IngestResult(IngestCounts):
    """What one upload stored (the ``spanprism ingest --json`` summary)."""

    batches: int
    errors: list[str]


class BatchPublic(IngestCounts):
    id: str
    source: str
    started_at: datetime
    finished_at: datetime | None


class BatchesPublic(BaseModel):
    data: list[BatchPublic]
    count: int


def _ingest_file(database: Database, settings: Settings, path: str, source: str) -> IngestSummary:
    """Ingest one uploaded file, taking the write lock per batch (never for the whole upload: the OTLP writer and
    the scheduler interleave). Raises :class:`BodyTooLarge` when it inflates past the cap, before storing any."""
    limits = settings.ingest_limits()  # an export file may inflate far past max_body_bytes, as on the CLI
    check_inflated_size(path, settings.max_decompressed_bytes)

    def store(batch: Batch) -> BatchCounts:
        batch.source = source  # provenance: the client's file name, not our temporary path
        for item in batch.quarantined:
            item.source = source
        with database.writer() as cur:
            return store_batch(cur, batch)

    summary = ingest_paths(database.con, [path], workers=settings.ingest_workers, chunk_bytes=settings.chunk_bytes,
                           batch_rows=settings.ingest_batch_rows, tenant_attribute=settings.tenant_attribute,
                           limits=limits, store=store)  # fmt: skip
    if summary.batches:  # list new series now (GET /series, the overview page), not at the next attribution pass
        with database.writer() as cur:
            span = batches_span(cur, summary.batches)
            if span is not None:
                register_series(cur, *span)
                database.bump_listing()
    summary.errors = [e.replace(path, source) for e in summary.errors]
    return summary


@router.post(
    "",
    response_model=IngestResult,
    summary="Upload an export file (raw body, any `spanprism ingest` format) and ingest it",
    responses={413: {"description": "body over max_body_bytes, or it inflates past the cap or holds too many records"}},
)
async def upload(
    request: Request,
    database: DbDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    _: IngestAuth,
    filename: Annotated[str, Query(max_length=300, description="the file's name, kept as the source")] = "upload",
) -> dict[str, Any]:
    fd, path = tempfile.mkstemp(prefix="spanprism-upload-")
    try:
        with os.fdopen(fd, "wb") as sink:
            try:
                await read_body_to(request, settings.max_body_bytes, sink.write)
            except BodyTooLarge as exc:
                metrics.requests_rejected.labels(code="413").inc()
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from None
        summary = await run_in_threadpool(_ingest_file, database, settings, path, f"upload:{filename}")
    except BodyTooLarge as exc:
        metrics.requests_rejected.labels(code="413").inc()
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from None
    finally:
        os.unlink(path)
    metrics.spans_received.inc(summary.spans_seen)
    metrics.spans_stored.inc(summary.calls_stored)
    metrics.spans_quarantined.inc(summary.quarantined)
    if summary.errors:  # one file: an error means it was refused as a whole (records cap); earlier batches stay
        metrics.requests_rejected.labels(code="413").inc()
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "; ".join(summary.errors))
    return summary.as_dict()


@router.get("/batches", response_model=BatchesPublic, summary="Ingest batches, newest first")
def batches(
    database: DbDep,
    settings: SettingsDep,
    page: PagingDep,
    _: ReadAuth,
    since: Since = None,
    until: Until = None,
    source: Annotated[str | None, Query(description="only batches from this source")] = None,
) -> BatchesPublic:
    since, until = window(since, until, max_days=settings.max_range_days, default_hours=None)
    where, params = ["TRUE"], []
    for clause, value in (("started_at >= ?", since), ("started_at < ?", until), ("source = ?", source)):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql_where = " AND ".join(where)
    with database.read() as cur:
        count = cur.execute(f"SELECT count(*) FROM ingest_batches WHERE {sql_where}", params).fetchone()[0]
        cur.execute(f"SELECT * FROM ingest_batches WHERE {sql_where} ORDER BY started_at DESC, id DESC "
                    "LIMIT ? OFFSET ?", [*params, page.limit, page.offset])  # fmt: skip
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    for row in rows:
        row["conventions"] = orjson.loads(row["conventions"] or "{}")
    return BatchesPublic(data=[BatchPublic(**row) for row in rows], count=count)
