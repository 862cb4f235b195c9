"""Quarantined records: list them (raw bytes not inline), fetch one's raw bytes, re-drive them with current code.

Re-drive re-decodes and normalizes each selected record's raw bytes (``spanprism.ingest.redrive``). A record that now
parses has its calls stored (one new ingest batch, source ``redrive``) and gets ``redriven_at``; one that still
fails stays, with its reason updated to what the current code says. Both happen in one transaction.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

import pyarrow as pa
from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, Field, model_validator

from spanprism.api.deps import AdminAuth, DbDep, MetricsDep, ReadAuth, SettingsDep
from spanprism.api.schemas import PagingDep, window
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database
from spanprism.ingest.load import store_batches
from spanprism.ingest.records import Batch, merge_batches
from spanprism.ingest.redrive import redrive_record

router = APIRouter(prefix="/quarantine", tags=["quarantine"])

#: Most records one re-drive call takes (each is decoded in the request; page through larger sets).
MAX_REDRIVE = 10_000


def _contains(text: str | None) -> str | None:
    """A LIKE pattern matching ``text`` anywhere, literally: its ``%``, ``_`` and ``\\`` are escaped."""
    if text is None:
        return None
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class QuarantineFilter(BaseModel):
    """Which records: every given field must match."""

    batch: str | None = Field(None, description="ingest batch id")
    source: str | None = Field(None, description="exact source (file name, `otlp/http`, `upload:NAME`)")
    reason: str | None = Field(None, description="case-insensitive substring of the reason")
    since: datetime | None = Field(None, description="received at or after")
    until: datetime | None = Field(None, description="received before")
    redriven: bool | None = Field(None, description="true: only re-driven records; false: only pending ones")

    def sql(self) -> tuple[str, list[Any]]:
        where, params = ["TRUE"], []
        for clause, value in (("ingest_batch = ?", self.batch), ("source = ?", self.source),
                              ("reason ILIKE ? ESCAPE '\\'", _contains(self.reason)), ("received_at >= ?", self.since),
                              ("received_at < ?", self.until)):  # fmt: skip
            if value is not None:
                where.append(clause)
                params.append(value)
        if self.redriven is not None:
            where.append("redriven_at IS NOT NULL" if self.redriven else "redriven_at IS NULL")
        return " AND ".join(where), params


class QuarantinedPublic(BaseModel):
    id: str
    ingest_batch: str
    source: str
    location: str | None
    reason: str
    raw_bytes: int = Field(description="size of the raw bytes (GET /quarantine/{id}/raw returns them)")
    received_at: datetime
    redriven_at: datetime | None


class QuarantinePublic(BaseModel):
    data: list[QuarantinedPublic]
    count: int


class RedriveRequest(BaseModel):
    """Either ``ids`` or ``filter`` (or both: ids further narrowed by the filter)."""

    ids: list[str] | None = Field(None, max_length=MAX_REDRIVE)
    filter: QuarantineFilter | None = None
    limit: int = Field(1000, ge=1, le=MAX_REDRIVE, description="most records taken (oldest first)")
    include_redriven: bool = Field(False, description="also re-drive records already re-driven")

    @model_validator(mode="after")
    def _something_selected(self) -> RedriveRequest:
        if self.ids is None and self.filter is None:
            raise ValueError("give `ids` or a `filter` (an empty filter `{}` selects every pending record)")
        return self


class RedriveResult(BaseModel):
    selected: int
    redriven: int = Field(description="records that now parse: their calls were stored, redriven_at set")
    still_failing: int = Field(description="records that still fail; their reason was updated")
    calls_stored: int
    duplicates: int
    non_llm_skipped: int
    batch: str | None = Field(description="the ingest batch holding the re-driven calls")


@router.get("", response_model=QuarantinePublic, summary="Quarantined records, newest first (no raw bytes)")
def index(
    database: DbDep,
    settings: SettingsDep,
    page: PagingDep,
    filters: Annotated[QuarantineFilter, Depends()],
    _: ReadAuth,
) -> QuarantinePublic:
    filters.since, filters.until = window(filters.since, filters.until, max_days=settings.max_range_days,
                                          default_hours=None)  # fmt: skip
    where, params = filters.sql()
    with database.read() as cur:
        count = cur.execute(f"SELECT count(*) FROM quarantine WHERE {where}", params).fetchone()[0]
        cur.execute("SELECT id, ingest_batch, source, location, reason, coalesce(octet_length(raw), 0) AS raw_bytes,"
                    f" received_at, redriven_at FROM quarantine WHERE {where} ORDER BY received_at DESC, id "
                    "LIMIT ? OFFSET ?", [*params, page.limit, page.offset])  # fmt: skip
        names = [d[0] for d in cur.description]
        rows = [QuarantinedPublic(**dict(zip(names, row, strict=True))) for row in cur.fetchall()]
    return QuarantinePublic(data=rows, count=count)


@router.get(
    "/{record_id}/raw",
    response_class=Response,
    summary="The raw bytes of one quarantined record",
    responses={200: {"content": {"application/octet-stream": {}}}, 404: {"description": "no such record"}},
)
def raw(record_id: str, database: DbDep, _: AdminAuth) -> Response:  # fmt: skip
    with database.read() as cur:
        row = cur.execute("SELECT raw FROM quarantine WHERE id = ?", [record_id]).fetchone()
    if row is None:
        raise HTTPException(404, f"no quarantined record {record_id}")
    return Response(bytes(row[0] or b""), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{record_id}.bin"'})  # fmt: skip


def _select(database: Database, body: RedriveRequest) -> list[tuple[str, str, str, bytes]]:
    where, params = (body.filter or QuarantineFilter()).sql()
    if body.ids is not None:
        where += f" AND id IN ({','.join('?' * len(body.ids))})" if body.ids else " AND FALSE"
        params += body.ids
    if not body.include_redriven:
        where += " AND redriven_at IS NULL"
    with database.read() as cur:
        return cur.execute(f"SELECT id, source, coalesce(location, ''), raw FROM quarantine WHERE {where} "
                           "ORDER BY received_at, id LIMIT ?", [*params, body.limit]).fetchall()  # fmt: skip


def _redrive(database: Database, settings: Settings, body: RedriveRequest) -> RedriveResult:
    records = _select(database, body)
    fixed: list[tuple[str, Batch]] = []
    failing: list[tuple[str, str]] = []
    for record_id, source, location, data in records:
        out = redrive_record(bytes(data or b""), source=source, location=location,
                             tenant_attribute=settings.tenant_attribute)  # fmt: skip
        if out.quarantined:
            failing.append((record_id, "; ".join(dict.fromkeys(q.reason for q in out.quarantined))))
        else:
            fixed.append((record_id, out))
    # One batch for all the records that now parse, recorded as coming from the re-drive.
    batches = [replace(merge_batches([out for _, out in fixed]), source="redrive")] if fixed else []
    now = datetime.now(UTC)

    def mark(cur: Any) -> None:
        if fixed:
            cur.register("_redriven", pa.table({"id": [rid for rid, _ in fixed]}))
            cur.execute("UPDATE quarantine SET redriven_at = ? WHERE id IN (SELECT id FROM _redriven)", [now])
        if failing:
            cur.register("_failing", pa.table({"id": [r for r, _ in failing], "reason": [w for _, w in failing]}))
            cur.execute("UPDATE quarantine SET reason = f.reason FROM _failing f WHERE quarantine.id = f.id")

    with database.writer() as cur:
        counts = store_batches(cur, batches, also=mark)
    stored = counts[0] if counts else None
    return RedriveResult(
        selected=len(records), redriven=len(fixed), still_failing=len(failing),
        calls_stored=stored.calls_stored if stored else 0, duplicates=stored.duplicates if stored else 0,
        non_llm_skipped=stored.non_llm_skipped if stored else 0, batch=stored.batch_id if stored else None,
    )  # fmt: skip


@router.post("/redrive", response_model=RedriveResult, summary="Re-decode quarantined records with current code")
def redrive(body: RedriveRequest, database: DbDep, settings: SettingsDep, metrics: MetricsDep,
            _: AdminAuth) -> RedriveResult:  # fmt: skip
    result = _redrive(database, settings, body)
    metrics.spans_stored.inc(result.calls_stored)
    return result
