"""The series list of the API and the pages: pages of the ``series`` registry, one series, a regression's series,
and each series' health (traffic, latest p95s against their baselines, open regressions, a status).

Pure functions over a caller's DuckDB cursor, as the panels (:mod:`.panels`: a metric over time, the route mix, raw
calls); the health's baseline comparison uses the panels' band.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import orjson

from spanprism.attribution.store.panels import band_from_params, finite
from spanprism.attribution.store.records import ATTRIBUTION_FIELDS, MIN_REPORTED_CHANGE_PCT, WITHHELD_LIKE
from spanprism.attribution.store.rollup_sql import RollupConfig
from spanprism.models.state import StateCursor, key_in
from spanprism.models.times import iso_z as iso

#: The latency statistics whose health ``/series`` reports.
HEALTH_METRICS: tuple[str, ...] = ("e2e_p95_ms", "ttft_p95_ms", "itl_p95_ms")

_SERIES_FILTERS = {"series_key": "series_key", "service": "service", "provider": "provider", "model": "request_model",
                   "operation": "operation", "tenant": "tenant"}  # fmt: skip


def _series_where(filters: Mapping[str, str | None]) -> tuple[str, list[Any]]:
    used = {k: v for k, v in filters.items() if v is not None}
    clauses = [f"{_SERIES_FILTERS[k]} = ?" for k in used]
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", list(used.values())


def _series_dict(row: Sequence[Any]) -> dict[str, Any]:
    label = " / ".join(str(x) for x in row[1:6] if x is not None)  # what a dashboard's series picker shows
    return {"series_key": row[0], "label": label, "service": row[1], "provider": row[2], "model": row[3],
            "operation": row[4], "tenant": row[5], "first_bucket": iso(row[6]), "last_bucket": iso(row[7])}  # fmt: skip


def list_series(con: duckdb.DuckDBPyConnection, *, filters: Mapping[str, str | None], limit: int,
                offset: int) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
    """One page of the ``series`` table (ordered by service, provider, model, operation) and the total count."""
    where, params = _series_where(filters)
    total = con.execute(f"SELECT count(*) FROM series{where}", params).fetchall()[0][0]
    rows = con.execute(
        "SELECT series_key, service, provider, request_model, operation, tenant, first_bucket, last_bucket"
        f" FROM series{where} ORDER BY service, provider, request_model, operation, tenant, series_key"
        " LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    return [_series_dict(r) for r in rows], int(total)


def get_series(con: duckdb.DuckDBPyConnection, series_key: str) -> dict[str, Any] | None:
    """One series by key, or None."""
    rows = con.execute(
        "SELECT series_key, service, provider, request_model, operation, tenant, first_bucket, last_bucket"
        " FROM series WHERE series_key = ?",
        [series_key],
    ).fetchall()
    return _series_dict(rows[0]) if rows else None


def regression_series(con: duckdb.DuckDBPyConnection, regression_id: str,
                      results: StateCursor | None = None) -> dict[str, Any] | None:  # fmt: skip
    """The series a regression belongs to (by the key detection stored with it), or None; with it, the stored
    baseline parameters of the regression's metric as ``baseline_params`` (None without a baseline).

    The regression and its baseline are results (``results``: the state cursor, None = ``con``'s file), the
    series sits with the calls: two reads, as the two may live in different databases."""
    rows = (
        (results or con)
        .execute(
            "SELECT r.series_key, b.params FROM regressions r"
            " LEFT JOIN baselines b ON b.series_key = r.series_key AND b.metric = r.metric WHERE r.id = ?",
            [regression_id],
        )
        .fetchall()
    )
    series = get_series(con, rows[0][0]) if rows else None
    if series is None:
        return None
    return {**series, "baseline_params": orjson.loads(rows[0][1]) if rows[0][1] else None}


def series_health(con: duckdb.DuckDBPyConnection, series: list[dict[str, Any]], *, at: datetime,
                  config: RollupConfig | None = None,
                  results: StateCursor | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Add traffic, latest p95s against their baselines, open regressions and a status to each series as of ``at``.

    ``status`` is ``no_data`` without calls in the hour before ``at``, ``degraded`` with an open regression, else ok.
    Latest p95s come from the coarsest stored grain's most recent bucket starting within two hours before ``at``.
    Regressions and baselines are read from ``results`` (the state cursor; None = ``con``'s file).
    """
    config = config or RollupConfig()
    keys = [s["series_key"] for s in series]
    if not keys:
        return []
    base, coarse = config.base_grain, config.grains[-1]
    calls = {r[0]: r[1:] for r in con.execute(
        "SELECT series_key, sum(n_calls) FILTER (WHERE bucket_start >= ?), sum(n_calls) FROM series_rollups"
        " WHERE grain_s = ? AND series_key IN (SELECT unnest(?)) AND bucket_start >= ? AND bucket_start < ?"
        " GROUP BY series_key",
        [at - timedelta(hours=1), base, keys, at - timedelta(days=1), at]).fetchall()}  # fmt: skip
    cols = ", ".join(f"arg_max({m}, bucket_start) FILTER (WHERE {m} IS NOT NULL)" for m in HEALTH_METRICS)
    latest = {r[0]: r[1:] for r in con.execute(
        f"SELECT series_key, max(bucket_start), {cols} FROM series_rollups WHERE grain_s = ?"
        " AND series_key IN (SELECT unnest(?)) AND bucket_start >= ? AND bucket_start < ? GROUP BY series_key",
        [coarse, keys, at - timedelta(hours=2), at]).fetchall()}  # fmt: skip
    rc = results or con
    regs = _open_regressions(rc, keys, at)
    params = _all_params(rc, keys)  # one query, not one per series and metric (the list's latency was N+1 queries)
    for s in series:
        key = s["series_key"]
        n_hour, n_day = calls.get(key, (None, None))
        s["calls_1h"], s["calls_24h"] = int(n_hour or 0), int(n_day or 0)
        when, *values = latest.get(key, (None, None, None, None))
        s["latest"] = {m: _versus_baseline(params.get((key, m)), v, when)
                       for m, v in zip(HEALTH_METRICS, values, strict=True)}  # fmt: skip
        s["open_regressions"], s["worst_open_label"] = regs.get(key, (0, None))
        s["status"] = "no_data" if not s["calls_1h"] else "degraded" if s["open_regressions"] else "ok"
    return series


def _open_regressions(con: StateCursor, keys: list[str], at: datetime) -> dict[str, tuple[int, str]]:
    """Per series: how many reported regressions are open at ``at``, and the label of the largest one."""
    only, params = key_in(con, "r.series_key", keys)
    rows = con.execute(
        "SELECT r.series_key, r.change_pct, a.label FROM regressions r"
        " LEFT JOIN regression_attributions a ON a.regression_id = r.id"
        f" WHERE r.status = 'open' AND r.change_pct >= ? AND r.start_time < ? AND {only}"
        " AND coalesce(a.evidence NOT LIKE ?, true)",  # withheld ones are not reported (records.WITHHELD)
        [MIN_REPORTED_CHANGE_PCT, at, *params, WITHHELD_LIKE],
    ).fetchall()
    out: dict[str, tuple[int, str]] = {}
    worst: dict[str, float] = {}
    for key, change, label in rows:  # the open regressions of a series are few: counted here, on either engine
        n, top = out.get(key, (0, ATTRIBUTION_FIELDS["label"]))
        if key not in worst or change > worst[key]:
            worst[key], top = change, label or ATTRIBUTION_FIELDS["label"]
        out[key] = (n + 1, top)
    return out


def _all_params(con: StateCursor, keys: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The stored baseline parameters of the health metrics of ``keys``, by (series key, metric)."""
    by_key, key_params = key_in(con, "series_key", keys)
    by_metric, metric_params = key_in(con, "metric", HEALTH_METRICS)
    rows = con.execute(f"SELECT series_key, metric, params FROM baselines WHERE {by_key} AND {by_metric}",
                       [*key_params, *metric_params]).fetchall()  # fmt: skip
    return {(key, metric): orjson.loads(params) for key, metric, params in rows}


def _versus_baseline(params: dict[str, Any] | None, value: float | None, when: datetime | None) -> dict[str, Any]:
    out: dict[str, Any] = {"time": iso(when), "value": finite(value), "baseline": None, "change_pct": None}
    if value is None or when is None:
        return out
    band = band_from_params(params, np.array([int(when.timestamp())]))
    if band is not None and band[0][0] is not None:
        out["baseline"] = band[0][0]
        out["change_pct"] = round(100.0 * (float(value) / band[0][0] - 1.0), 2)
    return out
