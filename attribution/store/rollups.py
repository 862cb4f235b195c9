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

from spanprism.attribution.store.calls import CALLS_IN_RANGE, data_span, unrolled_batches
from spanprism.models.schema import LLM_CALL_COLUMNS, ROUTE_COLUMNS, SERIES_COLUMNS
from spanprism.models.times import as_utc

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


def rollup_select(config: RollupConfig, grain: int) -> str:
    """The SELECT that aggregates ``llm_calls`` into rollup rows at ``grain`` seconds (the panels API reuses it)."""
    ok = "coalesce(status, 'ok') <> 'error'"
    q = "quantile_cont"
    eligible = f"input_tokens >= {int(config.cache_min_input_tokens)} AND cache_read_tokens IS NOT NULL"
    tokens = ", ".join(
        f"{q}({c}, [0.5, 0.95]) AS q_{c}"
        for c in ("input_tokens", "uncached_input_tokens", "cache_read_tokens", "output_tokens")
    )
    return f"""
    SELECT {_series_cols(config)}, {grain} AS grain_s, {bucket_sql(grain)} AS b,
      count(*) AS n_calls, count(*) FILTER (WHERE status = 'error') AS n_errors,
      count(ttft_ms) FILTER (WHERE {ok}) AS n_ttft, count(itl_ms) FILTER (WHERE {ok}) AS n_itl,
      count(queue_ms) FILTER (WHERE {ok}) AS n_queue,
      count(cache_read_tokens) AS n_cache_reported, count(*) FILTER (WHERE {eligible}) AS n_cache_eligible,
      {q}(duration_ms, [0.5, 0.95, 0.99]) FILTER (WHERE {ok}) AS q_e2e,
      exp(avg(ln(greatest(duration_ms, 1e-3))) FILTER (WHERE {ok})) AS e2e_gmean_ms,
      {q}(ttft_ms, [0.5, 0.95]) FILTER (WHERE {ok}) AS q_ttft,
      exp(avg(ln(greatest(ttft_ms, 1e-3))) FILTER (WHERE {ok})) AS ttft_gmean_ms,
      {q}(itl_ms, [0.5, 0.95]) FILTER (WHERE {ok}) AS q_itl,
      exp(avg(ln(greatest(itl_ms, 1e-3))) FILTER (WHERE {ok})) AS itl_gmean_ms,
      {q}(queue_ms, 0.95) FILTER (WHERE {ok}) AS queue_p95_ms,
      {tokens},
      sum(cache_read_tokens) FILTER (WHERE cache_read_tokens IS NOT NULL)
        / nullif(sum(input_tokens) FILTER (WHERE cache_read_tokens IS NOT NULL), 0) AS cache_read_ratio,
      count(*) FILTER (WHERE {eligible} AND cache_read_tokens > 0)
        / nullif(count(*) FILTER (WHERE {eligible}), 0) AS cache_hit_rate
    FROM {CALLS_IN_RANGE}
    GROUP BY ALL"""


def _rollup_insert(config: RollupConfig, grain: int) -> str:
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
    FROM ({rollup_select(config, grain)})
    ORDER BY b"""


def _dimensions_insert(config: RollupConfig) -> str:
    # Two stages: count each route combination first (few per bucket), then unpivot that small result.
    grain = config.base_grain
    routes = ", ".join(f"coalesce(CAST({c} AS VARCHAR), '') AS {c}" for c in ROUTE_COLUMNS)
    key_cols = ", ".join(f"k_{c}" for c in config.series_columns)
    return f"""
    INSERT INTO rollup_dimensions
    SELECT series_key, {grain}, b, dimension, value, sum(n)
    FROM (UNPIVOT (SELECT {_keyed(config)} AS series_key, * EXCLUDE ({key_cols})
                   FROM (SELECT {_series_cols(config)}, {bucket_sql(grain)} AS b, {routes}, count(*) AS n
                         FROM {CALLS_IN_RANGE} GROUP BY ALL))
          ON {", ".join(ROUTE_COLUMNS)} INTO NAME dimension VALUE value)
    GROUP BY ALL
    ORDER BY b"""


def _series_upsert(config: RollupConfig) -> str:
    names = ", ".join(f"k_{c}" if c in config.series_columns else "CAST(NULL AS VARCHAR)" for c in SERIES_NAME_COLUMNS)
    grain = config.base_grain
    return f"""
    INSERT INTO series
    SELECT {_keyed(config)}, {names}, lo, hi
    FROM (SELECT {_series_cols(config)}, min({bucket_sql(grain)}) AS lo, max({bucket_sql(grain)}) AS hi
          FROM {CALLS_IN_RANGE} GROUP BY ALL)
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
    con.execute(_series_upsert(config), dict(zip(("lo", "hi"), _aligned(lo, hi, config.base_grain), strict=True)))


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


def _recompute(con: duckdb.DuckDBPyConnection, config: RollupConfig, lo: datetime, hi: datetime) -> int:
    """Replace every bucket (all grains) overlapping [lo, hi]; returns the rollup rows written."""
    written = 0
    for grain in config.grains:
        params = dict(zip(("lo", "hi"), _aligned(lo, hi, grain), strict=True))
        where = "grain_s = $g AND bucket_start >= $lo AND bucket_start < $hi"
        con.execute(f"DELETE FROM series_rollups WHERE {where}", {**params, "g": grain})
        con.execute(_rollup_insert(config, grain), params)
        count = con.execute(f"SELECT count(*) FROM series_rollups WHERE {where}", {**params, "g": grain}).fetchall()
        written += count[0][0]
        if grain == config.base_grain:
            con.execute(f"DELETE FROM rollup_dimensions WHERE {where}", {**params, "g": grain})
            con.execute(_dimensions_insert(config), params)
            con.execute(_series_upsert(config), params)
    return written


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
    con.execute("BEGIN TRANSACTION")
    try:
        for lo, hi in merged:
            result.rows_written += _recompute(con, config, lo, hi)
        now = datetime.now(UTC)
        if batches:
            con.executemany(
                "INSERT OR REPLACE INTO rollup_batches VALUES (?, ?, ?, ?)", [(b, lo, hi, now) for b, lo, hi in batches]
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    result.series = con.execute("SELECT count(*) FROM series").fetchall()[0][0]
    return result
