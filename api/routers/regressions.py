"""Regressions (read) and post-mortem feedback (admin): the DESIGN.md records, newest first.

``GET /regressions`` answers ``{"data": [...], "count": n}`` with ``count`` the number of matching records (the page
is ``data``). A regression id may be shortened to any unique prefix, as on the CLI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status

from spanprism.api.deps import AdminAuth, DbDep, ReadAuth, SettingsDep
from spanprism.api.routers.series import cached_json
from spanprism.api.schemas import (
    FeedbackCreate,
    FeedbackPublic,
    Label,
    PagingDep,
    RegressionDetail,
    RegressionList,
    Since,
    Until,
    window,
)
from spanprism.api.storage.database import Database
from spanprism.attribution.classifier.model import Attributor, load_default
from spanprism.attribution.passes.label_pass import find_regression, record_feedback, regression_features
from spanprism.attribution.store.records import list_regressions

router = APIRouter(prefix="/regressions", tags=["regressions"])
_WITHHELD = ("also the regressions the label pass withheld (own-size drift, weak unexplained shifts: their "
             "'withheld' evidence row says why)")  # fmt: skip

RegressionId = Annotated[str, Path(min_length=4, max_length=64, description="id or a unique prefix of it")]
NOT_FOUND = {404: {"description": "no regression matches the id (or the prefix is ambiguous)"}}


@router.get("", response_model=RegressionList)
async def index(
    request: Request,
    database: DbDep,
    settings: SettingsDep,
    page: PagingDep,
    _: ReadAuth,
    label: Label | None = None,
    status_: Annotated[Literal["open", "resolved", "accepted"] | None, Query(alias="status")] = None,
    since: Since = None,
    until: Until = None,
    series_key: str | None = None,
    service: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    operation: str | None = None,
    withheld: Annotated[bool, Query(description=_WITHHELD)] = False,
) -> Any:
    """Regression records overlapping [since, until), filtered by label, status and series fields (withheld ones only
    with ``withheld=true``)."""
    lo, hi = window(since, until, max_days=settings.max_range_days, default_hours=None)
    names = {
        k: v
        for k, v in (("service", service), ("provider", provider), ("model", model), ("operation", operation))
        if v is not None
    }

    def compute() -> dict[str, Any]:
        with database.state.read() as cur:  # regressions are results: where the state lives
            records = list_regressions(cur, label=label, status=status_, since=lo, until=hi, withheld=withheld,
                                       series=series_key if series_key is not None else names or None)  # fmt: skip
        if series_key is not None and names:  # both: the key selects, the names must also match
            records = [r for r in records if all(r["series"].get(k) == v for k, v in names.items())]
        # list_regressions' DESIGN.md dicts, serialized as they are (the response model documents them).
        return {"data": records[page.offset : page.offset + page.limit], "count": len(records)}

    # Only attribution passes change regressions (and move db.generation), so every answer is cacheable.
    return await cached_json(request, database, True, compute)


def _find(database: Database, prefix: str) -> dict[str, Any]:
    with database.state.read() as cur:
        try:
            return find_regression(cur, prefix)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/{regression_id}", response_model=RegressionDetail, responses=NOT_FOUND)
def detail(regression_id: RegressionId, database: DbDep, _: ReadAuth) -> Any:
    """One regression with evidence, contributions, exemplars, every metric that moved and any feedback."""
    return _find(database, regression_id)


def _attributor(request: Request) -> Attributor:
    # Loaded once per app (parsing and verifying the artifact is not free; feedback is rare).
    att = getattr(request.app.state, "attributor", None)
    if att is None:
        att = request.app.state.attributor = load_default(request.app.state.settings.classifier)
    return att


@router.post("/{regression_id}/feedback", status_code=status.HTTP_201_CREATED, response_model=FeedbackPublic,
             responses=NOT_FOUND)  # fmt: skip
def feedback(regression_id: RegressionId, body: FeedbackCreate, request: Request, database: DbDep,
             _: AdminAuth) -> Any:  # fmt: skip
    """Record the true label (and reason, note) from a post-mortem; ``spanprism train --with-feedback`` learns it."""
    record = _find(database, regression_id)
    # Features first, outside the write lock: they re-read the episode's calls.
    with database.read() as cur, database.state.read() as rc:
        try:
            features = regression_features(cur, _attributor(request), record["id"], results=rc)
        except ValueError:  # no features (e.g. TTFT on a window without streaming calls, an artifact that does
            # not load): the label is still worth keeping
            features = None
    with database.state.write() as cur:
        row = record_feedback(cur, record["id"], label=body.label, reason=body.reason, note=body.note,
                              features=features)  # fmt: skip
    return row
