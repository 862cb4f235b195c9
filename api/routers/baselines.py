"""Stored baselines (read): per series and metric, the kind, version, grain, fit time and JSON parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from spanprism.api.deps import DbDep, ReadAuth
from spanprism.api.schemas import BaselineList, BaselinePublic, PagingDep
from spanprism.attribution.store import panels

router = APIRouter(tags=["baselines"])


@router.get("/baselines", response_model=BaselineList)
def list_baselines(database: DbDep, page: PagingDep, _: ReadAuth,
                   series_key: Annotated[str | None, Query(max_length=64)] = None,
                   metric: Annotated[str | None, Query(max_length=64)] = None) -> BaselineList:  # fmt: skip
    """Baselines the detector fitted (parameters are in log units: see attribution/baselines)."""
    with database.state.read() as cur:  # baselines are detection results: where the state lives
        rows, total = panels.list_baselines(cur, series_key=series_key, metric=metric, limit=page.limit,
                                            offset=page.offset)  # fmt: skip
    return BaselineList(data=[BaselinePublic(**r) for r in rows], count=total)
