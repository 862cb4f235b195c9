"""Dashboard panel queries: a metric over time with its baseline band, the route mix, baselines, raw calls.

Pure functions over a caller's DuckDB cursor (the API owns HTTP, caching and limits). A panel step that equals a
stored rollup grain reads ``series_rollups`` directly; a coarser step re-aggregates additive counts from the
rollups and computes everything else (quantiles, ratios) from ``llm_calls`` with the very SELECT the rollups are
built with, so a 15-minute p95 is the p95 of the calls in those 15 minutes, never an average of 5-minute p95s.
The baseline band comes from the stored baseline parameters through the baseline kind's own ``expected``. The
series list and each series' health are in :mod:`.series_list`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import orjson

from spanprism.attribution.baselines import create_baseline
from spanprism.attribution.store import clickhouse_calls as ch
from spanprism.attribution.store.calls import calls_by_id, series_page
from spanprism.attribution.store.records import list_regressions
from spanprism.attribution.store.rollup_sql import RollupConfig, bucket_sql, rollup_select, rollup_statistics
from spanprism.models.clickhouse import bound
from spanprism.models.schema import ROUTE_COLUMNS
from spanprism.models.state import StateCursor
from spanprism.models.tables import ROLLUP_METRICS
from spanprism.models.times import iso_z as iso  # panels.iso: the routers' and pages' name

#: Counts that add up across buckets (so a coarser step sums them from the rollups).
ADDITIVE_METRICS: tuple[str, ...] = ("n_calls", "n_errors")
#: Every metric a panel may ask for: the rollup statistics, call/error counts and the error rate.
METRIC_NAMES: tuple[str, ...] = (*ROLLUP_METRICS, *ADDITIVE_METRICS, "error_rate")
#: Half-width of the band in baseline noise units (baselines are fitted on ln values: the band is asymmetric in ms).
BAND_Z = 2.0
# Where each metric sits in the rollup SELECT (its quantile lists are 1-based DuckDB arrays).
_SELECT_EXPR: dict[str, str] = {
    "e2e_p50_ms": "q_e2e[1]", "e2e_p95_ms": "q_e2e[2]", "e2e_p99_ms": "q_e2e[3]",
    "ttft_p50_ms": "q_ttft[1]", "ttft_p95_ms": "q_ttft[2]", "itl_p50_ms": "q_itl[1]", "itl_p95_ms": "q_itl[2]",
    **{f"{c}_p{q}": f"q_{c}[{i}]" for c in ("input_tokens", "uncached_input_tokens", "cache_read_tokens",
                                             "output_tokens") for i, q in ((1, 50), (2, 95))},
    "error_rate": "n_errors / n_calls",
}  # fmt: skip
_STEP = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_step(text: str | int, *, base_grain: int) -> int:
    """Seconds of a panel step like ``5m``, ``1h``, ``1d`` or ``900``; a multiple of the base grain dividing a day."""
    match = _STEP.match(str(text))
    if not match:
        raise ValueError(f"step {text!r} is not like 5m, 15m, 1h, 1d or seconds")
    step = int(match.group(1)) * _UNIT_S[match.group(2)]
    if step <= 0 or step % base_grain or (step < 86400 and 86400 % step) or (step > 86400 and step % 86400):
        raise ValueError(f"step must be a multiple of {base_grain}s that divides a day (or whole days)")
    return step


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing or not finite (JSON has no NaN)."""
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


# --- a metric over time, with its baseline band -------------------------------------------------------------------


def load_params(con: StateCursor, series_key: str, metric: str) -> dict[str, Any] | None:
    """The stored baseline parameters of one series and metric (as written), or None."""
    rows = con.execute("SELECT params FROM baselines WHERE series_key = ? AND metric = ?", [series_key, metric])
    found = rows.fetchall()
    return orjson.loads(found[0][0]) if found else None


Band = tuple[list[float | None], list[float | None], list[float | None]]
#: ``metric_points(params=_LOAD)``: read the baseline parameters from ``baselines``.
_LOAD = object()


def baseline_band(con: StateCursor, series_key: str, metric: str, ts: np.ndarray) -> Band | None:
    """(expected, lower, upper) in the metric's units at epoch seconds ``ts``; None when no baseline is stored.

    Baselines model ln(value): the expected value is exp(center) and the band exp(center ± BAND_Z·scale).
    """
    return band_from_params(load_params(con, series_key, metric), ts)


def band_from_params(params: dict[str, Any] | None, ts: np.ndarray) -> Band | None:
    """:func:`baseline_band` from parameters already loaded (None: no baseline stored)."""
    if params is None:
        return None
    try:
        center, scale = create_baseline(str(params["kind"])).expected(params, ts)
    except (KeyError, ValueError):  # a kind or version this code no longer knows: no band rather than a 500
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        mid, lo, hi = np.exp(center), np.exp(center - BAND_Z * scale), np.exp(center + BAND_Z * scale)
    return [finite(x) for x in mid.tolist()], [finite(x) for x in lo.tolist()], [finite(x) for x in hi.tolist()]


def _from_rollups(con: duckdb.DuckDBPyConnection, key: str, metric: str, grain: int, step_s: int,
                  since: datetime, until: datetime) -> list[tuple]:  # fmt: skip
    if step_s == grain:
        value, calls = metric, "n_calls"
    else:  # only additive counts reach here
        value, calls = f"sum({metric})", "sum(n_calls)"
    group = "" if step_s == grain else " GROUP BY 1"
    return con.execute(
        f"SELECT {bucket_sql(step_s, 'bucket_start')} AS t, {value}, {calls} FROM series_rollups"
        f" WHERE series_key = ? AND grain_s = ? AND bucket_start >= ? AND bucket_start < ?{group} ORDER BY 1",
        [key, grain, since, until],
    ).fetchall()


def _call_columns(series: Mapping[str, Any]) -> dict[str, Any]:
    """A ``series`` row as ``{llm_calls column: value}`` (tenant only when the series is keyed by one)."""
    names = {"service": series["service"], "provider": series["provider"], "request_model": series["model"],
             "operation": series["operation"]}  # fmt: skip
    if series.get("tenant") is not None:
        names["tenant"] = series["tenant"]
    return names


def _from_calls(con: duckdb.DuckDBPyConnection, series: Mapping[str, Any], metric: str, step_s: int,
                since: datetime, until: datetime, config: RollupConfig) -> list[tuple]:  # fmt: skip
    names = _call_columns(series)
    cfg = RollupConfig(grains=config.grains, series_columns=tuple(names),
                       cache_min_input_tokens=config.cache_min_input_tokens)  # fmt: skip
    if (store := bound()) is not None:  # the same statistics, aggregated in ClickHouse; only the buckets come back
        statistics = rollup_statistics(cfg, ch.render_statistic)
        rows = ch.rollup_rows(store, tuple(names), statistics, step_s, since, until, where=ch.series_predicate(names))
        con.register("_spanprism_panel", rows)
        try:
            return con.execute(
                f"SELECT b, {_SELECT_EXPR.get(metric, metric)}, n_calls FROM _spanprism_panel ORDER BY b"
            ).fetchall()
        finally:
            con.unregister("_spanprism_panel")
    where = " AND ".join(f"k_{c} IS NOT DISTINCT FROM ${c}" for c in names)
    return con.execute(
        f"SELECT b, {_SELECT_EXPR.get(metric, metric)}, n_calls FROM ({rollup_select(cfg, step_s)})"
        f" WHERE {where} ORDER BY b",
        {**names, "lo": since, "hi": until},
    ).fetchall()


def metric_points(con: duckdb.DuckDBPyConnection, series: Mapping[str, Any], metric: str, *, step_s: int,
                  since: datetime, until: datetime, config: RollupConfig | None = None,
                  params: Mapping[str, Any] | object | None = _LOAD,
                  results: StateCursor | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Buckets of ``step_s`` in [since, until) with data: time, value, calls and the baseline band (or nulls).

    ``params``: the metric's baseline parameters when the caller already read them (None: no baseline); else they
    are read from ``results`` (the state cursor; None = ``con``'s file)."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}")
    config = config or RollupConfig()
    key = series["series_key"]
    if step_s in config.grains:
        rows = _from_rollups(con, key, metric, step_s, step_s, since, until)
    elif metric in ADDITIVE_METRICS:
        grain = max(g for g in config.grains if step_s % g == 0)
        rows = _from_rollups(con, key, metric, grain, step_s, since, until)
    else:
        rows = _from_calls(con, series, metric, step_s, since, until, config)
    ts = np.array([int(r[0].timestamp()) for r in rows], dtype=np.int64)
    if not len(ts):
        band = None
    elif params is _LOAD:
        band = baseline_band(results or con, key, metric, ts)
    else:
        band = band_from_params(params, ts)  # type: ignore[arg-type]
    mid, lo, hi = band or ([None] * len(rows),) * 3
    return [{"time": iso(r[0]), "value": finite(r[1]), "calls": int(r[2] or 0), "baseline": mid[i], "lower": lo[i],
             "upper": hi[i]} for i, r in enumerate(rows)]  # fmt: skip


def route_mix(con: duckdb.DuckDBPyConnection, series_key: str, *, step_s: int, since: datetime, until: datetime,
              dimension: str | None = None, config: RollupConfig | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Calls and share of each route value per step (base-grain counts summed), for one or every route dimension.

    A value of ``''`` means the calls did not report that dimension.
    """
    if dimension is not None and dimension not in ROUTE_COLUMNS:
        raise ValueError(f"unknown dimension {dimension!r}")
    grain = (config or RollupConfig()).base_grain
    dims = [dimension] if dimension else list(ROUTE_COLUMNS)
    rows = con.execute(
        f"SELECT t, dimension, value, n, n / sum(n) OVER (PARTITION BY t, dimension) FROM ("
        f" SELECT {bucket_sql(step_s, 'bucket_start')} AS t, dimension, value, sum(n_calls) AS n FROM rollup_dimensions"
        " WHERE series_key = ? AND grain_s = ? AND bucket_start >= ? AND bucket_start < ?"
        " AND dimension IN (SELECT unnest(?)) GROUP BY ALL) ORDER BY t, dimension, n DESC, value",
        [series_key, grain, since, until, dims],
    ).fetchall()
    return [{"time": iso(r[0]), "dimension": r[1], "value": r[2], "calls": int(r[3]), "share": round(float(r[4]), 6)}
            for r in rows]  # fmt: skip


# --- baselines and raw calls --------------------------------------------------------------------------------------


def list_baselines(con: StateCursor, *, series_key: str | None, metric: str | None, limit: int,
                   offset: int) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
    """Stored baselines (newest fit first) with their parsed parameters, and the total count."""
    clauses, params = [], []
    for column, value in (("series_key", series_key), ("metric", metric)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    total = con.execute(f"SELECT count(*) FROM baselines{where}", params).fetchall()[0][0]
    rows = con.execute(
        "SELECT series_key, metric, kind, version, grain_s, fitted_until, updated_at, params FROM baselines"
        f"{where} ORDER BY series_key, metric LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    out = [{"series_key": r[0], "metric": r[1], "kind": r[2], "version": r[3], "grain_s": r[4],
            "fitted_until": iso(r[5]), "updated_at": iso(r[6]), "params": orjson.loads(r[7])}
           for r in rows]  # fmt: skip
    return out, int(total)


def list_calls(con: duckdb.DuckDBPyConnection, series: Mapping[str, Any], *, since: datetime, until: datetime,
               limit: int, offset: int) -> list[dict[str, Any]]:  # fmt: skip
    """Raw ``llm_calls`` rows of one series in [since, until), oldest first (times as ISO strings)."""
    columns, rows = series_page(con, _call_columns(series), since, until, limit=limit, offset=offset)
    return [{c: (iso(v) if isinstance(v, datetime) else finite(v) if isinstance(v, float) else v)
             for c, v in zip(columns, row, strict=True)} for row in rows]  # fmt: skip


def open_regressions_by_label(con: StateCursor) -> dict[str, float]:
    """How many reported regressions are open, per label (``unexplained`` until attributed) — a scrape-time gauge."""
    counts: dict[str, float] = {}
    for record in list_regressions(con, status="open"):
        label = record.get("label") or "unexplained"
        counts[label] = counts.get(label, 0.0) + 1.0
    return counts


def exemplar_calls(con: duckdb.DuckDBPyConnection, exemplars: Sequence[Mapping[str, Any]], *,
                   since: datetime | None = None, until: datetime | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The stored ids and timings of a record's exemplar calls (in the record's order; unknown ones as given).

    What a support ticket asks for is the provider's request id, which the record's ``{trace_id, span_id}`` lacks.
    ``since``/``until`` (the episode, say) let DuckDB skip every row group outside it instead of scanning the table.
    """
    pairs = [(str(x.get("trace_id", "")), str(x.get("span_id", ""))) for x in exemplars]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    if pairs:
        columns, rows = calls_by_id(con, pairs, since=since, until=until)
        for row in rows:
            call = {c: (iso(v) if isinstance(v, datetime) else v) for c, v in zip(columns, row, strict=True)}
            found[(call["trace_id"], call["span_id"])] = call
    return [found.get(p, {"trace_id": p[0], "span_id": p[1]}) for p in pairs]
