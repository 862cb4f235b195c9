"""Incremental refresh of the per-series time-bucket rollups of ``llm_calls`` (what is stored and the SQL that
computes it: :mod:`.rollup_sql`).

Incremental refresh: ``rollup_batches`` remembers which ingest batches are already rolled up together with the
[min, max] ``start_time`` of their calls; a refresh recomputes every bucket overlapping the time span of the new
batches (late data included) and nothing else. A worker's refresh of its shard (:func:`refresh_series_rollups`)
recomputes its series only; :func:`register_series` lists a new series ahead of the next pass. On ClickHouse the
aggregation runs there and only its rows come back, stored by the same statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from spanprism.attribution.store import clickhouse_calls as ch
from spanprism.attribution.store.calls import batches_written_since, data_span, unrolled_batches
from spanprism.attribution.store.rollup_sql import (
    SERIES_NAME_COLUMNS,
    RollupConfig,
    dimensions_insert,
    keyed_sql,
    rollup_insert,
    rollup_select,
    rollup_statistics,
    route_counts_select,
    series_span_select,
    series_upsert,
)
from spanprism.models.clickhouse import ClickHouseStore, bound
from spanprism.models.schema import ROUTE_COLUMNS
from spanprism.models.times import as_utc
from spanprism.models.transaction import transaction


@dataclass
class RollupRefresh:
    """What one refresh did."""

    windows: list[tuple[datetime, datetime]] = field(default_factory=list)
    batches: int = 0
    rows_written: int = 0
    series: int = 0


def register_series(con: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime, *,
                    config: RollupConfig | None = None) -> None:  # fmt: skip
    """Upsert the ``series`` rows of the calls stored in [lo, hi] now, ahead of the next rollup pass.

    So a new series is listed (``GET /series``, the overview page) within seconds of its first stored span rather
    than after the next scheduled pass. The rollup pass runs the same upsert, so nothing is counted twice.
    """
    config = config or RollupConfig()
    params = dict(zip(("lo", "hi"), _aligned(lo, hi, config.base_grain), strict=True))
    if (store := bound()) is not None:
        rows = ch.series_spans(store, config.series_columns, config.base_grain, params["lo"], params["hi"])
        _from_rows(con, series_upsert(config, _PUSHED), rows, {})  # the window was applied in ClickHouse
    else:
        con.execute(series_upsert(config), params)


def _aligned(lo: datetime, hi: datetime, grain: int) -> tuple[datetime, datetime]:
    lo_s = int(lo.timestamp()) // grain * grain
    hi_s = (int(hi.timestamp()) // grain + 1) * grain
    return datetime.fromtimestamp(lo_s, UTC), datetime.fromtimestamp(hi_s, UTC)


def _merge(windows: list[tuple[datetime, datetime]], slack_s: int) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted(windows):
        if merged and (lo - merged[-1][1]).total_seconds() <= slack_s:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def pending_batches(con: duckdb.DuckDBPyConnection) -> list[tuple[str, datetime, datetime]]:
    """Ingest batches present in ``llm_calls`` but not yet rolled up, with their calls' time span (UTC)."""
    return [(b, as_utc(lo), as_utc(hi)) for b, lo, hi in unrolled_batches(con)]


#: The DuckDB-side FROM of rows aggregated in ClickHouse (registered Arrow), for the same INSERT statements.
_PUSHED = "SELECT * FROM _spanprism_pushed"


def _from_rows(con: duckdb.DuckDBPyConnection, sql: str, rows: object, params: dict[str, object]) -> None:
    con.register("_spanprism_pushed", rows)
    con.execute(sql, params)
    con.unregister("_spanprism_pushed")


#: The series a keyed refresh is restricted to (a registered one-column Arrow table: ``key``).
_KEYS = "_spanprism_keys"


def _only_keys(config: RollupConfig, source: str) -> str:
    """``source`` (rows with the ``k_*`` series columns) restricted to the series of :data:`_KEYS`."""
    return f"SELECT * FROM ({source}) WHERE {keyed_sql(config)} IN (SELECT key FROM {_KEYS})"


def _recompute(con: duckdb.DuckDBPyConnection, config: RollupConfig, lo: datetime, hi: datetime,
               keys: Sequence[str] | None = None) -> int:  # fmt: skip
    """Replace every bucket (all grains) overlapping [lo, hi] — of the series ``keys`` only, when given; returns the
    rollup rows written.

    On ClickHouse the aggregation runs there (``FINAL``, exact quantiles) and only its rows come back (for ``keys``,
    only those series' calls are aggregated: the filter is pushed down); the same INSERTs then key and store them
    here, so the series keys and the stored columns cannot differ by engine."""
    store = bound()
    written = 0
    only = "" if keys is None else f" AND series_key IN (SELECT key FROM {_KEYS})"
    local = (lambda sql: sql) if keys is None else (lambda sql: _only_keys(config, sql))
    if keys is not None:
        con.register(_KEYS, pa.table({"key": pa.array(sorted(keys), pa.string())}))
    try:
        pushed = "1" if keys is None or store is None else _pushed_keys(con, config, keys)
        for grain in config.grains:
            params = dict(zip(("lo", "hi"), _aligned(lo, hi, grain), strict=True))
            where = f"grain_s = $g AND bucket_start >= $lo AND bucket_start < $hi{only}"
            con.execute(f"DELETE FROM series_rollups WHERE {where}", {**params, "g": grain})
            if store is None:
                con.execute(rollup_insert(config, grain, local(rollup_select(config, grain))), params)
            else:
                rows = _pushed_rollups(store, config, grain, params, pushed)
                _from_rows(con, rollup_insert(config, grain, _PUSHED), rows, {})
            count = con.execute(f"SELECT count(*) FROM series_rollups WHERE {where}", {**params, "g": grain})
            written += count.fetchall()[0][0]
            if grain == config.base_grain:
                con.execute(f"DELETE FROM rollup_dimensions WHERE {where}", {**params, "g": grain})
                if store is None:
                    con.execute(dimensions_insert(config, local(route_counts_select(config))), params)
                    con.execute(series_upsert(config, local(series_span_select(config))), params)
                else:
                    lo_b, hi_b = params["lo"], params["hi"]
                    mix = ch.route_counts(store, config.series_columns, ROUTE_COLUMNS, grain, lo_b, hi_b, where=pushed)
                    _from_rows(con, dimensions_insert(config, _PUSHED), mix, {})
                    spans = ch.series_spans(store, config.series_columns, grain, lo_b, hi_b, where=pushed)
                    _from_rows(con, series_upsert(config, _PUSHED), spans, {})
    finally:
        if keys is not None:
            con.unregister(_KEYS)
    return written


def _pushed_keys(con: duckdb.DuckDBPyConnection, config: RollupConfig, keys: Sequence[str]) -> str:
    """ClickHouse's filter to the series ``keys``, led by their first series column's values from the ``series``
    registry (its primary index) when the registry knows every one of them."""
    lead = config.series_columns[0]
    if lead not in SERIES_NAME_COLUMNS:
        return ch.keys_predicate(config.series_columns, keys)
    rows = con.execute(f"SELECT series_key, {lead} FROM series WHERE series_key IN (SELECT key FROM {_KEYS})")
    known = rows.fetchall()
    if len(known) < len(set(keys)):  # a series the registry has not seen yet: the exact filter alone
        return ch.keys_predicate(config.series_columns, keys)
    return ch.keys_predicate(config.series_columns, keys, [value for _, value in known])


def _pushed_rollups(store: ClickHouseStore, config: RollupConfig, grain: int, params: dict[str, datetime],
                    where: str = "1") -> object:  # fmt: skip
    statistics = rollup_statistics(config, ch.render_statistic)
    return ch.rollup_rows(store, config.series_columns, statistics, grain, params["lo"], params["hi"], where=where)


def refresh_rollups(
    con: duckdb.DuckDBPyConnection,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    config: RollupConfig | None = None,
) -> RollupRefresh:
    """Bring ``series_rollups``/``rollup_dimensions``/``series`` up to date, in one transaction.

    Buckets touched by ingest batches not rolled up yet are recomputed; when ``since``/``until`` are given, every
    bucket overlapping that range is recomputed as well (a rebuild of the range). Running it twice is a no-op.
    """
    config = config or RollupConfig()
    batches = pending_batches(con)
    windows = [(lo, hi) for _, lo, hi in batches]
    if since is not None or until is not None:
        bounds = data_span(con)
        if bounds is not None:
            lo = max(as_utc(since), as_utc(bounds[0])) if since else as_utc(bounds[0])
            hi = min(as_utc(until), as_utc(bounds[1])) if until else as_utc(bounds[1])
            if lo <= hi:
                windows.append((lo, hi))
    merged = _merge(windows, slack_s=max(config.grains))
    result = RollupRefresh(windows=merged, batches=len(batches))
    with transaction(con) as cur:
        for lo, hi in merged:
            result.rows_written += _recompute(cur, config, lo, hi)
        now = datetime.now(UTC)
        if batches:
            cur.executemany(
                "INSERT OR REPLACE INTO rollup_batches VALUES (?, ?, ?, ?)", [(b, lo, hi, now) for b, lo, hi in batches]
            )
    result.series = con.execute("SELECT count(*) FROM series").fetchall()[0][0]
    return result


def refresh_series_rollups(
    con: duckdb.DuckDBPyConnection,
    keys: Sequence[str],
    since: datetime | None,
    *,
    written_since: datetime | None = None,
    config: RollupConfig | None = None,
) -> RollupRefresh:
    """Bring the rollups of the series ``keys`` only up to date, in one transaction: a worker's cache of its shard.

    Every bucket from ``since`` (None: all history) to the newest call is recomputed for those series, and so is
    the time span of every ingest batch written since ``written_since`` (late calls, whatever their time). On
    ClickHouse only those series' calls are aggregated there. ``rollup_batches`` is neither read nor written: it
    records batches rolled up for *every* series, which a shard's refresh is not; the caller keeps ``since`` and
    ``written_since`` per shard instead. ``RollupRefresh.windows`` ends at the newest call seen."""
    config = config or RollupConfig()
    result = RollupRefresh()
    bounds = data_span(con)
    if bounds is None or not keys:
        return result
    first, last = as_utc(bounds[0]), as_utc(bounds[1])
    windows = [(max(as_utc(since), first) if since else first, last)]
    if written_since is not None:
        windows += [(as_utc(lo), as_utc(hi)) for _, lo, hi in batches_written_since(con, written_since)]
    result.windows = _merge([(lo, hi) for lo, hi in windows if lo <= hi], slack_s=max(config.grains))
    with transaction(con) as cur:
        for lo, hi in result.windows:
            result.rows_written += _recompute(cur, config, lo, hi, keys)
    result.series = len(keys)
    return result
