"""Raw stored LLM calls of one series in a time window (capped page), for drill-down from a panel or regression."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from spanprism.api.deps import DbDep, ReadAuth, SettingsDep
from spanprism.api.schemas import CallList, PagingDep, Since, Until, window
from spanprism.attribution.store import panels, series_list

router = APIRouter(tags=["calls"])


@router.get("/calls", response_model=CallList, responses={404: {"description": "unknown series"}})
def list_calls(database: DbDep, settings: SettingsDep, page: PagingDep, _: ReadAuth,
               series_key: Annotated[str, Query(min_length=1, max_length=64)],
               since: Since = None, until: Until = None) -> CallList:  # fmt: skip
    """``llm_calls`` rows of a series in [since, until) (default: the last 24 h), oldest first.

    ``count`` is the number of rows in this page (the window may hold more: page with ``offset``).
    """
    lo, hi = window(since, until, max_days=settings.max_range_days)
    assert lo is not None and hi is not None
    with database.read() as cur:
        series = series_list.get_series(cur, series_key)
        if series is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no series {series_key}")
        rows = panels.list_calls(cur, series, since=lo, until=hi, limit=page.limit, offset=page.offset)
    return CallList(data=rows, count=len(rows))
