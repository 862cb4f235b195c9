"""Attribution jobs: queue a pass (admin), read one run, list runs (read). Runs are ``job_runs`` records."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field, model_validator

from spanprism.api.deps import AdminAuth, ReadAuth, SettingsDep
from spanprism.api.services.scheduler import JobRunner
from spanprism.attribution.passes import runs

router = APIRouter(prefix="/jobs", tags=["jobs"])

Kind = Literal["incremental", "nightly", "manual"]
Status = Literal["queued", "running", "succeeded", "failed", "skipped", "interrupted"]


class JobAttribute(BaseModel):
    """A pass to run now. ``since``/``until`` (ISO-8601, naive = UTC) only for ``manual``; none = all data."""

    kind: Kind = "manual"
    since: datetime | None = None
    until: datetime | None = None

    @model_validator(mode="after")
    def _range(self) -> JobAttribute:
        if self.kind != "manual" and (self.since or self.until):
            raise ValueError("only a manual pass takes since/until; incremental and nightly plan their own window")
        if self.since and self.until and runs.as_utc(self.since) >= runs.as_utc(self.until):  # type: ignore[operator]
            raise ValueError("since must be before until")
        return self


class JobPublic(BaseModel):
    """One attribution run as recorded in ``job_runs``."""

    id: str
    kind: Kind
    trigger: Literal["scheduler", "api", "cli", "worker"]
    status: Status
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    window_start: datetime | None = Field(None, description="Oldest call time the pass covered (or requested).")
    window_end: datetime | None = Field(None, description="Newest call time the pass covered (or requested).")
    counts: dict[str, Any] = Field(default_factory=dict, description="What the pass did (series, regressions, …).")
    error: str | None = None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


def _runner(request: Request) -> JobRunner:
    runner: JobRunner | None = getattr(request.app.state, "job_runner", None)
    if runner is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the attribution job runner is not running")
    return runner


@router.post("/attribute", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def submit(request: Request, _: AdminAuth, body: JobAttribute | None = None) -> JobPublic:
    """Queue one pass; poll ``GET /api/v1/jobs/{id}`` until its status is final."""
    body = body or JobAttribute()
    record = _runner(request).submit(body.kind, "api", since=body.since, until=body.until)
    return JobPublic(**record)


@router.get("/{run_id}", response_model=JobPublic, responses={404: {"description": "no such run"}})
def read(run_id: str, request: Request, _: ReadAuth) -> JobPublic:
    record = _runner(request).get(run_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job run {run_id!r}")
    return JobPublic(**record)


@router.get("", response_model=JobsPublic)
def index(
    request: Request,
    settings: SettingsDep,
    _: ReadAuth,
    kind: Kind | None = None,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobsPublic:
    """Runs newest first (``count`` is the total matching, for paging with ``limit``/``offset``)."""
    if limit > settings.max_page_size:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"limit is at most {settings.max_page_size}")
    page, total = _runner(request).list_runs(kind=kind, status=status_, limit=limit, offset=offset)
    return JobsPublic(data=[JobPublic(**r) for r in page], count=total)
