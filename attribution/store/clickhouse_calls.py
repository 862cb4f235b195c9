"""The ClickHouse dialect of the one reader of ``llm_calls`` (:mod:`spanprism.attribution.store.calls`).

``calls.py`` hands every question here when a ClickHouse store is bound (``models/clickhouse.py``); the answers
have the same shapes as the DuckDB ones. Every read says ``FINAL`` (``ReplacingMergeTree``: one row per call,
tombstoned calls gone, before or after background merges). Values are rendered as literals by :func:`lit` (times
as ``fromUnixTimestamp64Micro(µs, 'UTC')``), so no timezone or type guessing happens in the client.

The rollup aggregation is pushed down: :func:`render_statistic` renders the bucket statistics that
``rollup_sql.py`` defines once (exact quantiles: ``quantilesExactInclusive`` is DuckDB's ``quantile_cont``), and only
the aggregated rows travel back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from spanprism.models.clickhouse import ClickHouseStore, lit, lits
from spanprism.models.times import as_utc

CALLS = "llm_calls FINAL"


def _match(column: str, value: Any) -> str:
    return f"{column} IS NULL" if value is None else f"{column} = {lit(value)}"


def series_predicate(series: Mapping[str, Any]) -> str:
    """SQL matching every column of ``series`` (a NULL is a value like any other)."""
    return " AND ".join(_match(c, v) for c, v in series.items()) or "1"


def _range(lo: datetime | None, hi: datetime | None) -> str:
    parts = []
    if lo is not None:
        parts.append(f"start_time >= {lit(lo)}")
    if hi is not None:
        parts.append(f"start_time < {lit(hi)}")
    return " AND ".join(parts) or "1"


def _arrow(store: ClickHouseStore, sql: str, schema: pa.Schema | None = None) -> pa.Table:
    table = store.query_arrow(sql)
    return table.cast(schema) if schema is not None else table


def _names_rows(store: ClickHouseStore, sql: str) -> tuple[list[str], list[tuple]]:
    result = store.query(sql)
    return list(result.column_names), [tuple(r) for r in result.result_rows]


def series_calls(store: ClickHouseStore, series: Mapping[str, Any], lo: datetime, hi: datetime, *,
                 cut: Iterable[tuple[datetime, datetime]] = (), schema: pa.Schema) -> pa.Table:  # fmt: skip
    """Every column of the series' calls in [lo, hi) outside ``cut``, by start (``calls.series_calls``)."""
    where = series_predicate(series)
    for start, end in cut:
        where += f" AND NOT ({_range(start, end)})"
    columns = ", ".join(f"`{n}`" for n in schema.names)
    return _arrow(store, f"SELECT {columns} FROM {CALLS} WHERE {where} AND {_range(lo, hi)}"
                         " ORDER BY start_time, trace_id, span_id", schema)  # fmt: skip


def series_page(store: ClickHouseStore, series: Mapping[str, Any], lo: datetime, hi: datetime, *, limit: int,
                offset: int, columns: Sequence[str]) -> tuple[list[str], list[tuple]]:  # fmt: skip
    """One page of the series' calls in [lo, hi), oldest first (``calls.series_page``)."""
    cols = ", ".join(f"`{c}`" for c in columns)
    where = f"{series_predicate(series)} AND {_range(lo, hi)}"
    page = f"LIMIT {int(limit)} OFFSET {int(offset)}"
    return _names_rows(store, f"SELECT {cols} FROM {CALLS} WHERE {where} ORDER BY start_time, trace_id, span_id {page}")


def last_call_start(store: ClickHouseStore, series: Mapping[str, Any]) -> datetime | None:
    """When the series' most recent call started (None without calls)."""
    rows = store.rows(f"SELECT max(start_time), count() FROM {CALLS} WHERE {series_predicate(series)}")
    return rows[0][0] if rows and rows[0][1] else None


def peer_series_count(store: ClickHouseStore, provider: str, lo: datetime, hi: datetime, *,
                      besides: Sequence[Any]) -> int:  # fmt: skip
    """How many series of ``provider`` other than ``besides`` had a call starting in [lo, hi)."""
    own = series_predicate(dict(zip(("service", "request_model", "operation"), besides, strict=True)))
    return int(store.rows(
        f"SELECT count() FROM (SELECT DISTINCT service, request_model, operation FROM {CALLS}"
        f" WHERE provider = {lit(provider)} AND {_range(lo, hi)} AND NOT ({own}))")[0][0])  # fmt: skip


def _span(store: ClickHouseStore, where: str) -> tuple[datetime, datetime] | None:
    # Without FINAL (a whole-table merge on read): a row replaced since may widen the span by its own start, which
    # only makes a pass plan a little more; tombstones are left out.
    lo, hi, n = store.rows(f"SELECT min(start_time), max(start_time), count() FROM llm_calls"
                           f" WHERE _deleted = 0 AND {where}")[0]  # fmt: skip
    return None if not n else (lo, hi)


def data_span(store: ClickHouseStore) -> tuple[datetime, datetime] | None:
    """(first, last) start time over all stored calls."""
    return _span(store, "1")


def batches_span(store: ClickHouseStore, batch_ids: Sequence[str]) -> tuple[datetime, datetime] | None:
    """(first, last) start time of the calls of the given ingest batches."""
    return _span(store, f"ingest_batch IN ({lits(batch_ids)})") if batch_ids else None


def calls_by_id(store: ClickHouseStore, pairs: Sequence[tuple[str, str]], columns: Sequence[str], *,
                since: datetime | None, until: datetime | None) -> tuple[list[str], list[tuple]]:  # fmt: skip
    """``columns`` of the calls keyed ``(trace_id, span_id)`` in [since, until)."""
    if not pairs:
        return [], []
    traces, spans = sorted({t for t, _ in pairs}), sorted({s for _, s in pairs})
    names, rows = _names_rows(
        store, f"SELECT {', '.join(columns)} FROM {CALLS} WHERE trace_id IN ({lits(traces)})"
               f" AND span_id IN ({lits(spans)}) AND {_range(since, until)}")  # fmt: skip
    wanted = set(pairs)
    return names, [row for row in rows if (row[0], row[1]) in wanted]


def batch_spans(store: ClickHouseStore, *, written_since: datetime | None) -> list[tuple[str, datetime, datetime]]:
    """The ingest batches written since ``written_since`` (all when None), with their calls' time span, oldest
    first (``''`` for no batch). Without FINAL: tombstones are left out, and a row another replaced belongs to a
    batch rolled up before."""
    since = "" if written_since is None else f" AND _version >= {int(as_utc(written_since).timestamp() * 1e9)}"
    return [tuple(r) for r in store.rows(
        "SELECT ifNull(ingest_batch, '') AS batch, min(start_time), max(start_time) FROM llm_calls"
        f" WHERE _deleted = 0{since} GROUP BY batch ORDER BY 2")]  # type: ignore[misc]  # fmt: skip


def latest_calls(store: ClickHouseStore, *, service: str | None, limit: int) -> tuple[list[str], list[tuple]]:
    """The newest calls, a few columns each (``spanprism calls``)."""
    where = f"WHERE service = {lit(service)}" if service else ""
    names, rows = _names_rows(
        store,
        "SELECT start_time, service, provider, request_model, region, status, streaming, input_tokens, "
        "cache_read_tokens, output_tokens, round(ttft_ms, 1) AS ttft_ms_, round(itl_ms, 2) AS itl_ms_, "
        f"round(duration_ms, 1) AS duration_ms_, source_convention FROM {CALLS} {where} "
        f"ORDER BY start_time DESC LIMIT {int(limit)}",
    )
    return [n.rstrip("_") for n in names], rows  # aliases that would shadow their own column in ClickHouse


def series_summary(store: ClickHouseStore) -> tuple[list[str], list[tuple]]:
    """Per series: calls, error share, latency quantiles and cache figures (``spanprism summary``)."""
    q = "quantileExactInclusive"
    names, rows = _names_rows(store, f"""
        SELECT service, provider, request_model, operation, count() AS calls,
          round(avg(if(status = 'error', 1, 0)) * 100, 1) AS error_pct,
          round({q}(0.95)(duration_ms), 0) AS e2e_p95_ms,
          round({q}(0.5)(ttft_ms), 0) AS ttft_p50_ms, round({q}(0.95)(ttft_ms), 0) AS ttft_p95_ms,
          round({q}(0.5)(itl_ms), 1) AS itl_p50_ms, round({q}(0.5)(input_tokens), 0) AS input_p50,
          round(sum(cache_read_tokens) / nullIf(sumIf(input_tokens, cache_read_tokens IS NOT NULL), 0), 3)
            AS cache_read_ratio
        FROM {CALLS} GROUP BY ALL ORDER BY calls DESC""")  # fmt: skip
    return names, rows


def series_key_sql(columns: Sequence[str]) -> str:
    """ClickHouse SQL of the stable series key: the same md5 as ``rollup_sql.series_key_sql`` computes in DuckDB."""
    parts = ", ".join(f"ifNull(toString({c}), '\u2205')" for c in columns)
    return f"substring(lower(hex(MD5(concatWithSeparator(char(31), {parts})))), 1, 16)"


def load_calls(store: ClickHouseStore, keys: list[str], *, start_s: int, end_s: int,
               series_columns: Iterable[str]) -> pd.DataFrame:  # fmt: skip
    """Latencies and tokens of the ok calls of the series ``keys`` in [start_s, end_s) (``calls.load_calls``)."""
    key = series_key_sql(list(series_columns))
    return _arrow(store, f"""
        SELECT series_key, t, duration_ms, ttft_ms, itl_ms, input_tokens, output_tokens FROM (
          SELECT {key} AS series_key, toUnixTimestamp64Micro(start_time) / 1e6 AS t, duration_ms, ttft_ms, itl_ms,
                 input_tokens, output_tokens
          FROM {CALLS}
          WHERE ifNull(status, 'ok') <> 'error' AND start_time >= fromUnixTimestamp64Micro({int(start_s) * 1_000_000},
                'UTC') AND start_time < fromUnixTimestamp64Micro({int(end_s) * 1_000_000}, 'UTC'))
        WHERE series_key IN ({lits(keys)})""").to_pandas()  # fmt: skip


# --- pushed-down rollups -----------------------------------------------------------------------------------------


def render_statistic(kind: str, column: str | None, where: str | None, levels: tuple[float, ...]) -> str:
    """ClickHouse SQL of one bucket statistic (the kinds of ``rollup_sql._statistics``; NULL where DuckDB's is)."""
    cond = where or "1"
    if column and kind not in ("sum_ratio", "count_ratio"):
        cond = f"{column} IS NOT NULL AND ({cond})"
    if kind == "count":
        return f"countIf({cond})"
    if kind == "quantiles":  # arrays cannot be NULL in ClickHouse: an empty one reads as NULL elements in DuckDB
        qs = ", ".join(repr(q) for q in levels)
        return f"if(countIf({cond}) = 0, [], quantilesExactInclusiveIf({qs})(assumeNotNull({column}), {cond}))"
    if kind == "quantile":
        return (f"if(countIf({cond}) = 0, NULL,"
                f" quantileExactInclusiveIf({levels[0]!r})(assumeNotNull({column}), {cond}))")  # fmt: skip
    if kind == "gmean":  # DuckDB's greatest() skips NULL: a call without the value counts as 1 µs there, so here
        base = where or "1"
        return f"if(countIf({base}) = 0, NULL, exp(avgIf(log(greatest(ifNull({column}, 1e-3), 1e-3)), {base})))"
    if kind == "sum_ratio":
        num, den = (column or "").split("/")
        return (f"if(countIf({cond}) = 0, NULL,"
                f" sumIf(assumeNotNull({num}), {cond}) / nullIf(sumIf(assumeNotNull({den}), {cond}), 0))")  # fmt: skip
    if kind == "count_ratio":
        num, den = (where or "").split("|")
        return f"countIf({num}) / nullIf(countIf({den}), 0)"
    raise ValueError(kind)


def bucket_sql(step_s: int, column: str = "start_time") -> str:
    """Start of the ``step_s``-second bucket holding ``column``: the epoch arithmetic of ``rollup_sql.bucket_sql``."""
    step_us = step_s * 1_000_000
    return f"fromUnixTimestamp64Micro(intDiv(toUnixTimestamp64Micro({column}), {step_us}) * {step_us}, 'UTC')"


def _keys(series_columns: Sequence[str]) -> str:
    return ", ".join(f"{c} AS k_{c}" for c in series_columns)


def rollup_rows(store: ClickHouseStore, series_columns: Sequence[str], statistics: str, grain: int, lo: datetime,
                hi: datetime, *, where: str = "1") -> pa.Table:  # fmt: skip
    """The rollup aggregation of the calls in [lo, hi) at ``grain``, computed in ClickHouse."""
    return _arrow(store, f"""
        SELECT {_keys(series_columns)}, {int(grain)} AS grain_s, {bucket_sql(grain)} AS b,
          {statistics}
        FROM {CALLS} WHERE {_range(lo, hi)} AND {where}
        GROUP BY ALL ORDER BY b""")  # fmt: skip


def route_counts(store: ClickHouseStore, series_columns: Sequence[str], route_columns: Sequence[str], grain: int,
                 lo: datetime, hi: datetime, *, where: str = "1") -> pa.Table:  # fmt: skip
    """Calls per series, bucket and route combination in [lo, hi) (the first stage of the route mix)."""
    routes = ", ".join(f"ifNull(toString({c}), '') AS r_{c}" for c in route_columns)
    table = _arrow(store, f"SELECT {_keys(series_columns)}, {bucket_sql(grain)} AS b, {routes}, count() AS n"
                          f" FROM {CALLS} WHERE {_range(lo, hi)} AND {where} GROUP BY ALL")  # fmt: skip
    return table.rename_columns([n[2:] if n.startswith("r_") else n for n in table.column_names])


def series_spans(store: ClickHouseStore, series_columns: Sequence[str], grain: int, lo: datetime,
                 hi: datetime, *, where: str = "1") -> pa.Table:  # fmt: skip
    """Per series, its first and last ``grain`` bucket among the calls in [lo, hi)."""
    return _arrow(store, f"SELECT {_keys(series_columns)}, min({bucket_sql(grain)}) AS lo, max({bucket_sql(grain)})"
                         f" AS hi FROM {CALLS} WHERE {_range(lo, hi)} AND {where} GROUP BY ALL")  # fmt: skip


def keys_predicate(series_columns: Sequence[str], keys: Sequence[str], lead_values: Sequence[Any] | None = None) -> str:
    """The calls of the series ``keys`` only (a worker's shard): their key computed per call, in ClickHouse.

    ``lead_values`` (the values of the first series column among those series, when known) go first: ``llm_calls``
    is ordered by the series columns, so ClickHouse skips the granules of other values through its primary index
    instead of computing the key of every call of the window."""
    if not keys:
        return "0"
    exact = f"{series_key_sql(list(series_columns))} IN ({lits(sorted(keys))})"
    if lead_values is None:
        return exact
    lead, present = series_columns[0], sorted({str(v) for v in lead_values if v is not None})
    parts = ([f"{lead} IN ({lits(present)})"] if present else []) + [f"{lead} IS NULL"] * (None in lead_values)
    return f"({' OR '.join(parts)}) AND {exact}"
