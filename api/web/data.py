"""What each page shows, read through the same functions the REST routers answer with (no second data path).

Series, panels and route mix come from ``attribution.store.panels``; a regression record from ``find_regression``
(what ``GET /regressions/{id}`` answers); ingest and quarantine status from the REST handlers themselves. Queries
added for the pages: :func:`series_list.regression_series` (a regression's series and baseline in one read) and
:func:`panels.exemplar_calls` (the calls of exemplars stored without their details, by older versions).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from spanprism.attribution.passes.label_pass import find_regression, list_feedback
from spanprism.attribution.store import panels, series_list
from spanprism.attribution.store.records import list_regressions
from spanprism.attribution.store.rollup_sql import RollupConfig
from spanprism.models.state import StateCursor

CONFIG = RollupConfig()
#: The time-range picker: label → hours.
RANGES: dict[str, float] = {"6h": 6, "24h": 24, "3d": 72, "7d": 168, "30d": 720}
#: Hours of a regression page's window before the onset (and at least after it).
BEFORE_ONSET_H, AFTER_ONSET_H = 16.0, 8.0


def step_for(hours: float) -> int:
    """The coarsest rollup grain that still draws ≥ ~70 buckets: 5 min up to a day, hourly beyond."""
    return CONFIG.grains[0] if hours <= 24 else CONFIG.grains[-1]


def newest_data(cur: duckdb.DuckDBPyConnection) -> datetime | None:
    row = cur.execute("SELECT max(last_bucket) FROM series").fetchone()
    value = row[0] if row else None
    return None if value is None else value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """A page's [since, until) and its bucket width; ``anchored`` when it ends at the newest data, not now."""

    since: datetime
    until: datetime
    step_s: int
    anchored: bool = False

    @property
    def since_iso(self) -> str:
        return panels.iso(self.since) or ""

    @property
    def until_iso(self) -> str:
        return panels.iso(self.until) or ""


def window_ending(cur: duckdb.DuckDBPyConnection, hours: float, until: datetime | None, now: datetime) -> Window:
    """``hours`` ending at ``until``; by default now, or the newest stored bucket when nothing arrived for that long
    (a replayed or paused feed would otherwise show an empty page)."""
    anchored = False
    if until is None:
        newest = newest_data(cur)
        until = now
        if newest is not None and newest + timedelta(hours=hours) < now:
            until, anchored = newest + timedelta(seconds=CONFIG.grains[0]), True
    grain = CONFIG.grains[0]
    until = datetime.fromtimestamp(-(-int(until.timestamp()) // grain) * grain, UTC)
    return Window(until - timedelta(hours=hours), until, step_for(hours), anchored)


def overview_rows(cur: duckdb.DuckDBPyConnection, win: Window, limit: int = 200, *,
                  results: StateCursor | None = None) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
    """Every series (first ``limit``) with its health and 24 h sparklines of e2e and TTFT p95 (``results``: the
    state cursor the regressions and baselines are read from; None = ``cur``'s file)."""
    rows, total = series_list.list_series(cur, filters={}, limit=limit, offset=0)
    rows = series_list.series_health(cur, rows, at=win.until, config=CONFIG, results=results)
    for row in rows:
        row["spark"] = {m: panels.metric_points(cur, row, m, step_s=CONFIG.grains[-1], since=win.since,
                                                until=win.until, config=CONFIG, results=results)
                        for m in ("e2e_p95_ms", "ttft_p95_ms")}  # fmt: skip
    return rows, total


def regression_window(record: dict[str, Any]) -> Window:
    """24 h around the onset (16 h before, 8 h after), longer when the episode outlasts it, at 5-minute steps."""
    start = datetime.fromisoformat(record["start"].replace("Z", "+00:00"))
    grain = CONFIG.grains[0]
    since = start - timedelta(hours=BEFORE_ONSET_H)
    since = datetime.fromtimestamp(int(since.timestamp()) // grain * grain, UTC)
    until = since + timedelta(hours=BEFORE_ONSET_H + AFTER_ONSET_H)
    if record.get("end"):
        end = datetime.fromisoformat(record["end"].replace("Z", "+00:00")) + timedelta(hours=2)
        until = min(max(until, end), since + timedelta(days=7))
    until = datetime.fromtimestamp(-(-int(until.timestamp()) // grain) * grain, UTC)
    hours = (until - since).total_seconds() / 3600
    return Window(since, until, grain if hours <= 48 else CONFIG.grains[-1])


def regression_view(cur: duckdb.DuckDBPyConnection, record: dict[str, Any], win: Window, *,
                    results: StateCursor | None = None) -> dict[str, Any]:  # fmt: skip
    """The metric and its band over the window, the series, and the exemplars' stored ids.

    Two reads: the series with the metric's baseline parameters (one query, by the key stored with the
    regression) and the metric's 5-minute rollups; not ``llm_calls``: exemplars carry their call's details since
    the labelling pass stores them (older records' exemplar calls are looked up, bounded by the episode so DuckDB
    reads only its row groups).
    """
    series = series_list.regression_series(cur, record["id"], results)
    points: list[dict[str, Any]] = []
    if series is not None:
        points = panels.metric_points(cur, series, record["metric"], step_s=win.step_s, since=win.since,
                                      until=win.until, config=CONFIG, params=series["baseline_params"])  # fmt: skip
    exemplars = record.get("exemplars") or []
    if any("start_time" not in x for x in exemplars):  # stored before exemplars carried their call's details
        start = datetime.fromisoformat(record["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(record["end"].replace("Z", "+00:00")) if record.get("end") else None
        # Exemplars are picked from the episode's calls; one bucket of slack on each side.
        slack = timedelta(seconds=CONFIG.grains[0])
        exemplars = panels.exemplar_calls(cur, exemplars, since=start - slack, until=end + slack if end else None)
    return {"series": series, "points": points, "exemplars": exemplars}


def regression_page(cur: duckdb.DuckDBPyConnection, ref: str, *,
                    results: StateCursor | None = None) -> dict[str, Any] | None:  # fmt: skip
    """The record ``ref`` names (``find_regression``: the REST and CLI lookup), its window and :func:`regression_view`;
    None when no single regression matches. All of it changes only with an attribution pass; the post-mortem labels,
    recorded between passes, are not part of it (:func:`feedback`)."""
    try:
        record = find_regression(results or cur, ref, feedback=False)
    except LookupError:
        return None
    win = regression_window(record)
    return {"r": record, "win": win, **regression_view(cur, record, win, results=results)}


def feedback(cur: StateCursor, regression_id: str) -> list[dict[str, Any]]:
    """The post-mortem labels recorded for a regression, oldest first (read on every view of its page)."""
    return list_feedback(cur, regression_id)


#: The series page's charts: (title, p95 or main metric, p50 line or None, unit).
SERIES_CHARTS: tuple[tuple[str, str, str | None, str], ...] = (
    ("end-to-end latency p95 (p50 dotted)", "e2e_p95_ms", "e2e_p50_ms", "ms"),
    ("time to first token p95 (p50 dotted)", "ttft_p95_ms", "ttft_p50_ms", "ms"),
    ("inter-token latency p95 (p50 dotted)", "itl_p95_ms", "itl_p50_ms", "ms"),
    ("share of prompt tokens read from cache", "cache_read_ratio", None, "pct"),
    ("calls with a cache hit", "cache_hit_rate", None, "pct"),
)


def series_view(cur: duckdb.DuckDBPyConnection, series: dict[str, Any], win: Window, *,
                results: StateCursor | None = None) -> dict[str, Any]:  # fmt: skip
    """Every chart of the series page, its route mix and its regressions overlapping the window."""
    charts = []
    for title, metric, low, unit in SERIES_CHARTS:
        kw = {"step_s": win.step_s, "since": win.since, "until": win.until, "config": CONFIG, "results": results}
        points = panels.metric_points(cur, series, metric, **kw)
        extra = panels.metric_points(cur, series, low, **kw) if low else []
        charts.append({"title": title, "metric": metric, "unit": unit, "points": points, "extra": extra})
    routes = panels.route_mix(cur, series["series_key"], step_s=win.step_s, since=win.since, until=win.until,
                              config=CONFIG)  # fmt: skip
    regressions = list_regressions(results or cur, series=series["series_key"], since=win.since, until=win.until)
    return {"charts": charts, "routes": routes, "regressions": regressions}
