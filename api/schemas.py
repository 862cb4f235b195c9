"""Response models of the read API (one family per resource: ``XPublic`` and ``XList(data, count)``) and the
query helpers the read routers share: a capped page and a time window bounded by ``max_range_days``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from spanprism.api.deps import SettingsDep
from spanprism.attribution.vocabulary import ContributionKey, Label, check_reason
from spanprism.models.times import as_utc

# --- query helpers ----------------------------------------------------------------------------------------------


class Paging(BaseModel):
    """``limit`` (capped at ``max_page_size``) and ``offset``."""

    limit: int
    offset: int


async def page(settings: SettingsDep, limit: Annotated[int, Query(ge=1, description="rows per page (capped)")] = 100,
         offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> Paging:  # fmt: skip
    # Clamped rather than refused: a dashboard asking for more still gets a page, and `count` tells the total.
    return Paging(limit=min(limit, settings.max_page_size), offset=offset)


PagingDep = Annotated[Paging, Depends(page)]
_MIN_TIME = datetime(1970, 1, 2, tzinfo=UTC)
_MAX_TIME = datetime(9999, 1, 1, tzinfo=UTC)


def window(since: datetime | None, until: datetime | None, *, max_days: int, default_hours: float | None = 24.0,
           now: datetime | None = None) -> tuple[datetime | None, datetime | None]:  # fmt: skip
    """Validate a [since, until) range: 422 when reversed, out of bounds or longer than ``max_days``.

    With ``default_hours`` a missing ``until`` is now and a missing ``since`` is that many hours before ``until``.
    """
    since, until = as_utc(since), as_utc(until)
    if default_hours is not None:
        until = until or now or datetime.now(UTC)
        since = since or until - timedelta(hours=default_hours)
    for value in (since, until):
        if value is not None and not _MIN_TIME <= value <= _MAX_TIME:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "time out of range")
    if since is not None and until is not None:
        if since >= until:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since must be before until")
        if until - since > timedelta(days=max_days):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"range longer than {max_days} days")
    return since, until


Since = Annotated[datetime | None, Query(description="ISO-8601 start (inclusive; naive = UTC)")]
Until = Annotated[datetime | None, Query(description="ISO-8601 end (exclusive; naive = UTC)")]


# --- series and panels ------------------------------------------------------------------------------------------


class LatestValue(BaseModel):
    time: str | None = Field(description="bucket start of the latest value")
    value: float | None
    baseline: float | None = Field(description="what the stored baseline expected at that time")
    change_pct: float | None


class SeriesPublic(BaseModel):
    series_key: str
    label: str = Field(description="service / provider / model / operation [/ tenant]")
    service: str | None
    provider: str | None
    model: str | None
    operation: str | None
    tenant: str | None
    first_bucket: str | None
    last_bucket: str | None
    calls_1h: int = Field(description="calls in the hour before `until` (default now)")
    calls_24h: int
    latest: dict[str, LatestValue] = Field(description="e2e/ttft/itl p95 of the latest hour vs its baseline")
    open_regressions: int
    worst_open_label: str | None = Field(description="label of the open regression with the largest change")
    status: Literal["ok", "degraded", "no_data"]


class SeriesList(BaseModel):
    data: list[SeriesPublic]
    count: int


class MetricPoint(BaseModel):
    time: str
    value: float | None
    calls: int
    baseline: float | None = Field(description="expected value from the stored baseline (null without one)")
    lower: float | None
    upper: float | None


class MetricSeries(BaseModel):
    series_key: str
    metric: str
    step_s: int
    since: str
    until: str
    data: list[MetricPoint]
    count: int


class RoutePoint(BaseModel):
    time: str
    dimension: str
    value: str = Field(description="'' when the calls did not report the dimension")
    calls: int
    share: float


class RouteMix(BaseModel):
    series_key: str
    step_s: int
    data: list[RoutePoint]
    count: int


class MetricName(BaseModel):
    name: str
    unit: Literal["ms", "tokens", "ratio", "count"]
    has_baseline: bool = Field(description="the detector fits baselines for it (band available)")


class MetricNames(BaseModel):
    data: list[MetricName]
    count: int


class BaselinePublic(BaseModel):
    series_key: str
    metric: str
    kind: str
    version: int
    grain_s: int
    fitted_until: str
    updated_at: str
    params: dict[str, Any]


class BaselineList(BaseModel):
    data: list[BaselinePublic]
    count: int


class CallList(BaseModel):
    data: list[dict[str, Any]] = Field(description="llm_calls rows (DESIGN.md canonical record)")
    count: int


# --- regressions -------------------------------------------------------------------------------------------------


class SeriesName(BaseModel):
    model_config = ConfigDict(extra="allow")  # `tenant` appears only when it is a series column

    service: str | None
    provider: str | None
    model: str | None
    operation: str | None


class RegressionPublic(BaseModel):
    """The DESIGN.md regression record."""

    id: str
    series: SeriesName
    start: str
    end: str | None
    status: Literal["open", "resolved", "accepted"]
    metric: str
    baseline: float | None
    observed: float | None
    change_pct: float | None
    label: Label
    reason: str | None
    confidence: float
    contributions_ms: dict[ContributionKey, float]
    evidence: list[dict[str, Any]]
    exemplars: list[dict[str, Any]]


class RegressionList(BaseModel):
    data: list[RegressionPublic]
    count: int


class FeedbackPublic(BaseModel):
    id: str
    label: Label
    reason: str | None
    note: str | None
    created_at: datetime


class RegressionDetail(RegressionPublic):
    metrics: list[dict[str, Any]] = Field(description="every metric that moved, largest change first")
    feedback: list[FeedbackPublic]


class FeedbackCreate(BaseModel):
    """The true cause of a regression, from a post-mortem."""

    label: Label
    reason: str | None = Field(None, max_length=100, description="a reason of that label (vocabulary.REASONS)")
    note: str | None = Field(None, max_length=10_000, description="free text, e.g. a post-mortem link")

    @model_validator(mode="after")
    def _reason_of_label(self) -> FeedbackCreate:
        check_reason(self.label, self.reason)
        return self
