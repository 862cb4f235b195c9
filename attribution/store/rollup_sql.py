"""What a rollup bucket is and the DuckDB SQL that computes it: the series key, the bucket boundaries, every
bucket statistic (defined once, rendered per engine) and the statements that store rollup rows, the route mix and
the ``series`` registry.

A series is the configured tuple of columns (DESIGN.md: service, provider, request_model, operation, optionally
tenant); its key is a 16-hex-char md5 of those values, so it is stable across runs and machines. For each series
and bucket (several grains: the base grain for dense series, coarser ones so sparse series still collect enough
calls per evaluated bucket) we store counts, latency quantiles and geometric means, token quantiles and cache
ratios in ``series_rollups``, and the route mix (calls per region, server_address, deployment, response_model,
system_fingerprint value) as counts in the long table ``rollup_dimensions`` at the base grain (counts add up,
so a coarser window's mix is a sum; shares would not).

Latency statistics exclude error calls: a fast 429 or a 60 s timeout says nothing about the serving latency and
would bend the quantiles; the error rate is kept separately. When these statements run is :mod:`.rollups`'
business (the incremental refresh); the panels reuse :func:`rollup_select` and :func:`bucket_sql`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spanprism.attribution.store.calls import CALLS_IN_RANGE
from spanprism.models.schema import LLM_CALL_COLUMNS, ROUTE_COLUMNS, SERIES_COLUMNS

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


def keyed_sql(config: RollupConfig) -> str:
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


def rollup_insert(config: RollupConfig, grain: int, source: str | None = None) -> str:
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
    SELECT {keyed_sql(config)}, grain_s, b, n_calls, n_errors, n_errors / n_calls, n_ttft, n_itl, n_queue,
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


def dimensions_insert(config: RollupConfig, source: str | None = None) -> str:
    # Two stages: count each route combination first (few per bucket), then unpivot that small result.
    grain = config.base_grain
    key_cols = ", ".join(f"k_{c}" for c in config.series_columns)
    return f"""
    INSERT INTO rollup_dimensions
    SELECT series_key, {grain}, b, dimension, value, sum(n)
    FROM (UNPIVOT (SELECT {keyed_sql(config)} AS series_key, * EXCLUDE ({key_cols})
                   FROM ({source or route_counts_select(config)}))
          ON {", ".join(ROUTE_COLUMNS)} INTO NAME dimension VALUE value)
    GROUP BY ALL
    ORDER BY b"""


def series_span_select(config: RollupConfig) -> str:
    """Per series, its first and last base-grain bucket among the calls in [$lo, $hi)."""
    grain = config.base_grain
    return (f"SELECT {_series_cols(config)}, min({bucket_sql(grain)}) AS lo, max({bucket_sql(grain)}) AS hi"
            f" FROM {CALLS_IN_RANGE} GROUP BY ALL")  # fmt: skip


def series_upsert(config: RollupConfig, source: str | None = None) -> str:
    names = ", ".join(f"k_{c}" if c in config.series_columns else "CAST(NULL AS VARCHAR)" for c in SERIES_NAME_COLUMNS)
    return f"""
    INSERT INTO series
    SELECT {keyed_sql(config)}, {names}, lo, hi
    FROM ({source or series_span_select(config)})
    ON CONFLICT (series_key) DO UPDATE SET
      first_bucket = least(series.first_bucket, excluded.first_bucket),
      last_bucket = greatest(series.last_bucket, excluded.last_bucket)"""
