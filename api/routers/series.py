"""Series and dashboard panels: every series with its health, a metric over time with its baseline band, the route
mix, and the metric names a panel may ask for.

Panel answers with an explicit ``since`` and ``until`` are cached per ``db.generation`` (every finished attribution
pass moves it, and only those passes rewrite rollups, baselines and regressions); answers relative to "now" are
never cached. Calls ingested since the last pass show up in coarse-step quantile panels after the next pass.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from spanprism.api.deps import DbDep, ReadAuth, SettingsDep
from spanprism.api.schemas import (
    MetricName,
    MetricNames,
    MetricSeries,
    PagingDep,
    RouteMix,
    SeriesList,
    SeriesPublic,
    Since,
    Until,
    window,
)
from spanprism.api.storage.database import Database
from spanprism.attribution.detection.episodes import FAMILIES
from spanprism.attribution.store import panels, series_list
from spanprism.attribution.store.rollup_sql import RollupConfig
from spanprism.models.schema import ROUTE_COLUMNS

router = APIRouter(tags=["series"])

_CONFIG = RollupConfig()
_CACHE_SIZE = 512
_MISS = object()
SeriesKey = Annotated[str, Path(min_length=1, max_length=64, description="the series key (see GET /series)")]
Step = Annotated[str, Query(max_length=16, description="bucket width: 5m, 15m, 1h, 1d or seconds")]
NOT_FOUND = {404: {"description": "unknown series"}}


class PanelCache:
    """Answers keyed by request; dropped wholesale when the database generation moves."""

    def __init__(self) -> None:
        self.generation = -1
        self.entries: dict[tuple, Any] = {}
        self.lock = threading.Lock()
        self._flights: dict[tuple, asyncio.Future[Any]] = {}

    def _lookup(self, db: Database, key: tuple) -> tuple[int, Any]:
        generation = db.generation
        with self.lock:
            if generation != self.generation:
                self.generation, self.entries = generation, {}
            return generation, self.entries.get(key, _MISS)

    def _store(self, generation: int, key: tuple, value: Any) -> None:
        with self.lock:
            if generation == self.generation:
                if len(self.entries) >= _CACHE_SIZE:
                    self.entries.pop(next(iter(self.entries)))
                self.entries[key] = value

    def get_or_compute(self, db: Database, key: tuple, compute: Callable[[], Any]) -> Any:
        generation, value = self._lookup(db, key)
        if value is _MISS:
            value = compute()  # outside the lock: concurrent panels must not queue behind one slow query
            self._store(generation, key, value)
        return value

    async def aget_or_compute(self, db: Database, key: tuple, compute: Callable[[], Any]) -> Any:
        """As :meth:`get_or_compute`, answering hits on the event loop and computing misses in the thread pool.

        Concurrent misses of one key share one computation: when a pass moves the generation, 50 dashboards asking
        for the same list at once cost one query, not 50 queueing for the cores.
        """
        generation, value = self._lookup(db, key)
        if value is not _MISS:
            return value
        flight = (generation, key)
        task = self._flights.get(flight)  # only touched on the event loop thread
        if task is None:
            task = self._flights[flight] = asyncio.ensure_future(run_in_threadpool(compute))
            task.add_done_callback(lambda _: self._flights.pop(flight, None))
        value = await asyncio.shield(task)  # a cancelled waiter must not cancel the others' computation
        self._store(generation, key, value)
        return value


async def cached_json(request: Request, db: Database, explicit: bool,
                      compute: Callable[[], dict[str, Any]]) -> Response:  # fmt: skip
    """The answer as JSON bytes, from the cache when the window is explicit.

    Panels hold hundreds of points: serializing the dicts straight to JSON (their shape is the response model, which
    still documents them) instead of validating them through pydantic on every request halves a cached answer's cost.
    A hit is answered on the event loop without a thread-pool hop (the tail latency under 50 concurrent clients).
    """

    def encode() -> bytes:
        return orjson.dumps(compute())

    if not explicit:
        body = await run_in_threadpool(encode)
    else:
        body = await panel_cache(request).aget_or_compute(db, (request.url.path, str(request.url.query)), encode)
    return Response(body, media_type="application/json")


def panel_cache(request: Request) -> PanelCache:
    """The app's one per-generation read cache (REST panels and the web pages' immutable parts share it)."""
    cache = getattr(request.app.state, "panel_cache", None)
    if cache is None:
        cache = request.app.state.panel_cache = PanelCache()
    return cache


def _series_or_404(db: Database, series_key: str) -> dict[str, Any]:
    with db.read() as cur:
        series = series_list.get_series(cur, series_key)
    if series is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no series {series_key}")
    return series


def _step(text: str) -> int:
    try:
        return panels.parse_step(text, base_grain=_CONFIG.base_grain)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@router.get("/series", response_model=SeriesList)
async def list_series(request: Request, database: DbDep, settings: SettingsDep, page: PagingDep, _: ReadAuth,
                      until: Until = None, service: str | None = None, provider: str | None = None,
                      model: str | None = None, operation: str | None = None) -> Any:  # fmt: skip
    """Every series with its health as of ``until`` (default: the end of the current 5-minute bucket): traffic,
    p95s vs baseline, open regressions.

    The list every dashboard opens first, so it is cached: it reads the ``series`` table (new series are listed by
    the OTLP writer and uploads, which move ``database.listing``) and rollups, baselines and regressions (which only
    attribution passes write; they move ``database.generation``). "Now" is rounded up to the end of the current
    base-grain bucket: rollup windows only move by whole buckets, so every ask within one bucket shares one answer.
    """
    _, at = window(None, until, max_days=settings.max_range_days)
    assert at is not None
    if until is None:
        at = ceil_to_grain(at, _CONFIG.base_grain)
    filters = {"service": service, "provider": provider, "model": model, "operation": operation}

    def compute() -> bytes:
        with database.read() as cur, database.state.read() as rc:
            rows, total = series_list.list_series(cur, filters=filters, limit=page.limit, offset=page.offset)
            rows = series_list.series_health(cur, rows, at=at, config=_CONFIG, results=rc)
        return SeriesList(data=[SeriesPublic(**r) for r in rows], count=total).model_dump_json().encode()

    key = ("series", database.listing, at, tuple(filters.values()), page.limit, page.offset)
    body = await panel_cache(request).aget_or_compute(database, key, compute)
    return Response(body, media_type="application/json")


def list_stamp(database: Database) -> tuple[int, int, datetime]:
    """What a cached list answer depends on besides its query: the generation (attribution passes rewrite rollups,
    baselines and regressions), the listing (ingest registered a series) and the series list's "now" (the end of the
    current base-grain bucket). :mod:`spanprism.api.hot_reads` keeps a pre-encoded answer while this holds."""
    return database.generation, database.listing, ceil_to_grain(datetime.now(UTC), _CONFIG.base_grain)


def ceil_to_grain(at: datetime, grain_s: int) -> datetime:
    """``at`` rounded up to a multiple of ``grain_s`` seconds since the epoch (unchanged when on one)."""
    seconds = -(-at.timestamp() // grain_s) * grain_s
    return datetime.fromtimestamp(seconds, UTC)


@router.get("/series/{series_key}/metrics", response_model=MetricSeries, responses=NOT_FOUND)
async def series_metric(request: Request, series_key: SeriesKey, database: DbDep, settings: SettingsDep, _: ReadAuth,
                  metric: Annotated[str, Query(max_length=64, description="see GET /metrics/names")] = "e2e_p95_ms",
                  step: Step = "5m", since: Since = None, until: Until = None) -> Any:  # fmt: skip
    """One metric of one series per ``step`` bucket, with the baseline band (``baseline``, ``lower``, ``upper``)."""
    if metric not in panels.METRIC_NAMES:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown metric {metric!r}; see /metrics/names")
    step_s = _step(step)
    lo, hi = window(since, until, max_days=settings.max_range_days)
    assert lo is not None and hi is not None
    if (hi - lo).total_seconds() / step_s > 20_000:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "more than 20000 buckets; use a coarser step")

    def compute() -> dict[str, Any]:
        series = _series_or_404(database, series_key)
        with database.read() as cur, database.state.read() as rc:
            points = panels.metric_points(cur, series, metric, step_s=step_s, since=lo, until=hi, config=_CONFIG,
                                          results=rc)  # fmt: skip
        return {"series_key": series_key, "metric": metric, "step_s": step_s, "since": panels.iso(lo),
                "until": panels.iso(hi), "data": points, "count": len(points)}  # fmt: skip

    return await cached_json(request, database, since is not None and until is not None, compute)


@router.get("/series/{series_key}/routes", response_model=RouteMix, responses=NOT_FOUND)
async def series_routes(request: Request, series_key: SeriesKey, database: DbDep, settings: SettingsDep, _: ReadAuth,
                  dimension: Literal[ROUTE_COLUMNS] | None = None,  # type: ignore[valid-type]
                  step: Step = "1h", since: Since = None, until: Until = None) -> Any:  # fmt: skip
    """The route mix per ``step``: calls and share of each region, endpoint, deployment, model snapshot, fingerprint."""
    step_s = _step(step)
    lo, hi = window(since, until, max_days=settings.max_range_days)
    assert lo is not None and hi is not None

    def compute() -> dict[str, Any]:
        _series_or_404(database, series_key)
        with database.read() as cur:
            rows = panels.route_mix(cur, series_key, step_s=step_s, since=lo, until=hi, dimension=dimension,
                                    config=_CONFIG)  # fmt: skip
        return {"series_key": series_key, "step_s": step_s, "data": rows, "count": len(rows)}

    return await cached_json(request, database, since is not None and until is not None, compute)


def _unit(name: str) -> Literal["ms", "tokens", "ratio", "count"]:
    if name.endswith("_ms"):
        return "ms"
    if name.startswith("n_"):
        return "count"
    return "ratio" if name in ("cache_read_ratio", "cache_hit_rate", "error_rate") else "tokens"


@router.get("/metrics/names", response_model=MetricNames)
def metric_names(_: ReadAuth) -> MetricNames:
    """The metric names ``GET /series/{key}/metrics`` accepts (route mix: ``GET /series/{key}/routes``)."""
    banded = {stat for stats in FAMILIES.values() for stat in stats}
    names = [MetricName(name=n, unit=_unit(n), has_baseline=n in banded) for n in panels.METRIC_NAMES]
    return MetricNames(data=names, count=len(names))
