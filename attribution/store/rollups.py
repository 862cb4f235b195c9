"""Per-series time-bucket rollups of ``llm_calls``, computed in DuckDB SQL and refreshed incrementally.

A series is the configured tuple of columns (DESIGN.md: service, provider, request_model, operation, optionally
tenant); its key is a 16-hex-char md5 of those values, so it is stable across runs and machines. For each series
and bucket (several grains: the base grain for dense series, coarser ones so sparse series still collect enough
calls per evaluated bucket) we store counts, latency quantiles and geometric means, token quantiles and cache
ratios in ``series_rollups``, and the route mix (calls per region, server_address, deployment, response_model,
system_fingerprint value) as counts in the long table ``rollup_dimensions`` at the base grain (counts add up,
so a coarser window's mix is a sum; shares would not).

Latency statistics exclude error calls: a fast 429 or a 60 s timeout says nothing about the serving latency and
would bend the quantiles; the error rate is kept separately.

Incremental refresh: ``rollup_batches`` remembers which ingest batches are already rolled up together with the
[min, max] ``start_time`` of their calls; a refresh recomputes every bucket overlapping the time span of the new
batches (late data included) and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from spanprism.attribution.store import clickhouse_calls as ch
from spanprism.attribution.store.calls import CALLS_IN_RANGE, batches_written_since, data_span, unrolled_batches
from spanprism.models.clickhouse import ClickHouseStore, bound
from spanprism.models.schema import LLM_CALL_COLUMNS, ROUTE_COLUMNS, SERIES_COLUMNS
from spanprism.models.times import as_utc
from spanprism.models.transaction import transaction

#: Columns of ``series`` that name a series (NULL when not part of the configured key).
SERIES_NAME_COLUMNS: tuple[str, ...] = ("service", "provider", "request_model", "operation", "tenant")
#: Prompts at least this long are eligible for provider prompt caching (OpenAI's documented minimum).
CACHE_MIN_INPUT_TOKENS = 1024


@dataclass(frozen=True)
class RollupConfig:
    """What a rollup bucket is: its grains (seconds, smallest first) and the columns naming a series."""

    grains: tuple[int, ...] = (300, 3600)
    series_columns: tuple[str, ...] = SERIES_COLUMNS
    cache_min_input_tokens: int = CACHE_MIN_INPUT_TOKENS

    def __post_init__(self) -> None:
        bad = [c for c in self.series_columns if c not in LLM_CALL_COLUMNS]
        if bad or not self.series_columns:
            raise ValueError(f"series columns must be llm_calls columns, got {bad or 'none'}")
        if not self.grains or any(g <= 0 or 86400 % g for g in self.grains):
            raise ValueError("grains must be positive divisors of one day (seconds)")
        object.__setattr__(self, "grains", tuple(sorted(set(self.grains))))

    @property
    def base_grain(self) -> int:
        """The finest grain: the route mix is stored at this one."""
        return self.grains[0]


@dataclass
class RollupRefresh:
    """What one refresh did."""

    windows: list[tuple[datetime, datetime]] = field(default_factory=list)
    batches: int = 0
    rows_written: int = 0
    series: int = 0


def series_key_sql(columns: Sequence[str]) -> str:
    """SQL expression of the stable series key (NULL and '' kept apart by a sentinel)."""
    parts = ", ".join(f"coalesce(CAST({c} AS VARCHAR), '\u2205')" for c in columns)
    return f"substr(md5(concat_ws(chr(31), {parts})), 1, 16)"


def bucket_sql(step_s: int, column: str = "start_time") -> str:
    """SQL of the start of the ``step_s``-second bucket holding ``column`` (a timestamp), as a UTC timestamp.

    Rollups bucket calls with it and the panels re-bucket rollups with it, so both agree on every boundary."""
    # Epoch arithmetic instead of time_bucket(): independent of the session TimeZone and of week origins.
    return f"to_timestamp((epoch_us({column}) // {step_s * 1_000_000}) * {step_s})"


def _series_cols(config: RollupConfig) -> str:
    return ", ".join(f"{c} AS k_{c}" for c in config.series_columns)


def _keyed(config: RollupConfig) -> str:
    # md5 per output row, not per call: grouping by the raw series columns and hashing afterwards is ~5x cheaper.
    return series_key_sql([f"k_{c}" for c in config.series_columns])


#: Every bucket statistic, defined once: (output name, kind, column, condition, quantile levels). The kinds are
#: rendered per engine by :func:`_render` (DuckDB here, ClickHouse in ``clickhouse_calls.py`` through
#: :func:`rollup_statistics`), so both compute the same thing: ``quantile_cont`` and ClickHouse's
#: ``quantilesExactInclusive`` are the same linear interpolation between closest ranks.
_OK = "coalesce(status, 'ok') <> 'error'"
_TOKENS = ("input_tokens", "uncached_input_tokens", "cache_read_tokens", "output_tokens")


def _statistics(config: RollupConfig) -> list[tuple[str, str, str | None, str | None, tuple[float, ...]]]:
    eligible = f"input_tokens >= {int(config.cache_min_input_tokens)} AND cache_read_tokens IS NOT NULL"
    return [
        ("n_calls", "count", None, None, ()),
        ("n_errors", "count", None, "status = 'error'", ()),
        ("n_ttft", "count", "ttft_ms", _OK, ()),
        ("n_itl", "count", "itl_ms", _OK, ()),
        ("n_queue", "count", "queue_ms", _OK, ()),
        ("n_cache_reported", "count", "cache_read_tokens", None, ()),
        ("n_cache_eligible", "count", None, eligible, ()),
        ("q_e2e", "quantiles", "duration_ms", _OK, (0.5, 0.95, 0.99)),
        ("e2e_gmean_ms", "gmean", "duration_ms", _OK, ()),
        ("q_ttft", "quantiles", "ttft_ms", _OK, (0.5, 0.95)),
        ("ttft_gmean_ms", "gmean", "ttft_ms", _OK, ()),
        ("q_itl", "quantiles", "itl_ms", _OK, (0.5, 0.95)),
        ("itl_gmean_ms", "gmean", "itl_ms", _OK, ()),
        ("queue_p95_ms", "quantile", "queue_ms", _OK, (0.95,)),
        *((f"q_{c}", "quantiles", c, None, (0.5, 0.95)) for c in _TOKENS),
        # Token-weighted: cache-read tokens over the whole prompts of the calls that report cache reads.
        ("cache_read_ratio", "sum_ratio", "cache_read_tokens/input_tokens", "cache_read_tokens IS NOT NULL", ()),
        ("cache_hit_rate", "count_ratio", None, f"{eligible} AND cache_read_tokens > 0|{eligible}", ()),
    ]


def _render_duckdb(kind: str, column: str | None, where: str | None, levels: tuple[float, ...]) -> str:
    f = f" FILTER (WHERE {where})" if where else ""
    if kind == "count":
        return f"count({column or '*'}){f}"
    if kind == "quantiles":
        return f"quantile_cont({column}, {list(levels)}){f}"
    if kind == "quantile":
        return f"quantile_cont({column}, {levels[0]}){f}"
    if kind == "gmean":  # geometric mean; a 0 ms value is floored at 1 µs so one bad value cannot zero it
        return f"exp(avg(ln(greatest({column}, 1e-3))){f})"
    if kind == "sum_ratio":
        num, den = (column or "").split("/")
        return f"sum({num}){f} / nullif(sum({den}){f}, 0)"
    if kind == "count_ratio":
        num, den = (where or "").split("|")
        return f"count(*) FILTER (WHERE {num}) / nullif(count(*) FILTER (WHERE {den}), 0)"
    raise ValueError(kind)


def rollup_statistics(config: RollupConfig, render) -> str:  # type: ignore[no-untyped-def]
    """The bucket statistics as one SELECT list, each rendered by ``render(kind, column, condition, levels)``."""
    return ",\n      ".join(f"{render(kind, col, where, levels)} AS {name}"
                             for name, kind, col, where, levels in _statistics(config))  # fmt: skip


def rollup_select(config: RollupConfig, grain: int) -> str:
    """The SELECT that aggregates ``llm_calls`` into rollup rows at ``grain`` seconds (the panels API reuses it)."""
    return f"""
    SELECT {_series_cols(config)}, {grain} AS grain_s, {bucket_sql(grain)} AS b,
      {rollup_statistics(config, _render_duckdb)}
    FROM {CALLS_IN_RANGE}
    GROUP BY ALL"""


def _rollup_insert(config: RollupConfig, grain: int, source: str | None = None) -> str:
    # Written in time order (a hash aggregate emits buckets in any order): every read of a panel, the regression
    # page or detection is a time range, and DuckDB skips the row groups whose bucket_start zone map misses it.
    # A 24 h panel of a 14-day backfill read 4 of 5 row groups without this.
    tok = [
        f"q_{c}[{i + 1}]"
        for c in ("input_tokens", "uncached_input_tokens", "cache_read_tokens", "output_tokens")
        for i in range(2)
    ]
    return f"""
    INSERT INTO series_rollups
    SELECT {_keyed(config)}, grain_s, b, n_calls, n_errors, n_errors / n_calls, n_ttft, n_itl, n_queue,
      n_cache_reported, n_cache_eligible,
      q_e2e[1], q_e2e[2], q_e2e[3], e2e_gmean_ms, q_ttft[1], q_ttft[2], ttft_gmean_ms,
      q_itl[1], q_itl[2], itl_gmean_ms, queue_p95_ms, {", ".join(tok)}, cache_read_ratio, cache_hit_rate
    FROM ({source or rollup_select(config, grain)})
    ORDER BY b"""


def route_counts_select(config: RollupConfig) -> str:
    """Calls per series, base-grain bucket and route combination in [$lo, $hi) (the first stage of the mix)."""
    routes = ", ".join(f"coalesce(CAST({c} AS VARCHAR), '') AS {c}" for c in ROUTE_COLUMNS)
    return (f"SELECT {_series_cols(config)}, {bucket_sql(config.base_grain)} AS b, {routes}, count(*) AS n"
            f" FROM {CALLS_IN_RANGE} GROUP BY ALL")  # fmt: skip


def _dimensions_insert(config: RollupConfig, source: str | None = None) -> str:
    # Two stages: count each route combination first (few per bucket), then unpivot that small result.
    grain = config.base_grain
    key_cols = ", ".join(f"k_{c}" for c in config.series_columns)
    return f"""
    INSERT INTO rollup_dimensions
    SELECT series_key, {grain}, b, dimension, value, sum(n)
    FROM (UNPIVOT (SELECT {_keyed(config)} AS series_key, * EXCLUDE ({key_cols})
                   FROM ({source or route_counts_select(config)}))
          ON {", ".join(ROUTE_COLUMNS)} INTO NAME dimension VALUE value)
    GROUP BY ALL
    ORDER BY b"""


def series_span_select(config: RollupConfig) -> str:
    """Per series, its first and last base-grain bucket among the calls in [$lo, $hi)."""
    grain = config.base_grain
    return (f"SELECT {_series_cols(config)}, min({bucket_sql(grain)}) AS lo, max({bucket_sql(grain)}) AS hi"
            f" FROM {CALLS_IN_RANGE} GROUP BY ALL")  # fmt: skip


def _series_upsert(config: RollupConfig, source: str | None = None) -> str:
    names = ", ".join(f"k_{c}" if c in config.series_columns else "CAST(NULL AS VARCHAR)" for c in SERIES_NAME_COLUMNS)
    return f"""
    INSERT INTO series
    SELECT {_keyed(config)}, {names}, lo, hi
    FROM ({source or series_span_select(config)})
    ON CONFLICT (series_key) DO UPDATE SET
      first_bucket = least(series.first_bucket, excluded.first_bucket),
      last_bucket = greatest(series.last_bucket, excluded.last_bucket)"""


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
        _from_rows(con, _series_upsert(config, _PUSHED), rows, {})  # the window was applied in ClickHouse
    else:
        con.execute(_series_upsert(config), params)


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
    return f"SELECT * FROM ({source}) WHERE {_keyed(config)} IN (SELECT key FROM {_KEYS})"


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
                con.execute(_rollup_insert(config, grain, local(rollup_select(config, grain))), params)
            else:
                rows = _pushed_rollups(store, config, grain, params, pushed)
                _from_rows(con, _rollup_insert(config, grain, _PUSHED), rows, {})
            count = con.execute(f"SELECT count(*) FROM series_rollups WHERE {where}", {**params, "g": grain})
            written += count.fetchall()[0][0]
            if grain == config.base_grain:
                con.execute(f"DELETE FROM rollup_dimensions WHERE {where}", {**params, "g": grain})
                if store is None:
                    con.execute(_dimensions_insert(config, local(route_counts_select(config))), params)
                    con.execute(_series_upsert(config, local(series_span_select(config))), params)
                else:
                    lo_b, hi_b = params["lo"], params["hi"]
                    mix = ch.route_counts(store, config.series_columns, ROUTE_COLUMNS, grain, lo_b, hi_b, where=pushed)
                    _from_rows(con, _dimensions_insert(config, _PUSHED), mix, {})
                    spans = ch.series_spans(store, config.series_columns, grain, lo_b, hi_b, where=pushed)
                    _from_rows(con, _series_upsert(config, _PUSHED), spans, {})
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
