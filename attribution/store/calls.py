"""The one reader of ``llm_calls``: every question attribution (and the API on its behalf) asks of the stored calls.

* the calls of one series in a time window, optionally with other windows cut out (the label pass's episode and
  baseline windows, the API's raw-call listing);
* the series' last call, and how many *other* series of a provider had traffic in a window (the classifier's
  cross-series context);
* the time span of all data, of some ingest batches, and of the batches not rolled up yet (pass planning and
  incremental rollups);
* the FROM clause the rollup aggregation reads (:data:`CALLS_IN_RANGE`, parameters ``$lo``/``$hi``);
* the CLI's quick looks (latest calls, a per-series summary).

A series is matched column by column with ``IS NOT DISTINCT FROM``, so a NULL operation is a value like any other.

When a ClickHouse store is bound (``SPANPRISM_CLICKHOUSE_URL``, ``models/clickhouse.py``), ``llm_calls`` lives there:
each function hands the question to :mod:`~spanprism.attribution.store.clickhouse_calls` (same answers, ClickHouse
SQL) and keeps using ``con`` only for what stays in DuckDB (``rollup_batches``, ``series``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from spanprism.attribution.store import clickhouse_calls as ch
from spanprism.models.clickhouse import bound
from spanprism.models.schema import LLM_CALLS_SCHEMA

#: How far before the last rollup refresh a ClickHouse write may be and still not be rolled up (a refresh that ran
#: long, writers' clocks apart).
UNROLLED_MARGIN = timedelta(hours=6)
#: The rows the rollup SELECTs aggregate: the calls that started in [$lo, $hi).
CALLS_IN_RANGE = "llm_calls WHERE start_time >= $lo AND start_time < $hi"

Span = tuple[datetime, datetime]
#: What a record's exemplar says about its call: ids (the provider's request id is what a support ticket asks for),
#: when, how slow, how many tokens, which route.
EXEMPLAR_COLUMNS: tuple[str, ...] = (
    "trace_id", "span_id", "provider_request_id", "response_id", "start_time", "duration_ms", "ttft_ms",
    "uncached_input_tokens", "cache_read_tokens", "output_tokens", "region", "deployment", "response_model",
)  # fmt: skip


def series_predicate(series: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """SQL matching every column of ``series`` (``{column: value}``), and its parameters."""
    return " AND ".join(f"{c} IS NOT DISTINCT FROM ?" for c in series), list(series.values())


def series_calls(
    con: duckdb.DuckDBPyConnection,
    series: Mapping[str, Any],
    lo: datetime,
    hi: datetime,
    *,
    cut: Iterable[tuple[datetime, datetime]] = (),
) -> pa.Table:
    """Every column of the series' calls that started in [lo, hi) and in none of the ``cut`` windows, by start."""
    if (store := bound()) is not None:
        return ch.series_calls(store, series, lo, hi, cut=cut, schema=LLM_CALLS_SCHEMA)
    where, params = series_predicate(series)
    for start, end in cut:
        where += " AND NOT (start_time >= ? AND start_time < ?)"
        params += [start, end]
    return con.sql(
        f"SELECT * FROM llm_calls WHERE {where} AND start_time >= ? AND start_time < ? ORDER BY start_time",
        params=[*params, lo, hi],
    ).to_arrow_table()


def series_page(con: duckdb.DuckDBPyConnection, series: Mapping[str, Any], lo: datetime, hi: datetime, *,
                limit: int, offset: int) -> tuple[list[str], list[tuple]]:  # fmt: skip
    """(column names, rows) of one page of the series' calls in [lo, hi), oldest first (ties by trace, span)."""
    if (store := bound()) is not None:
        return ch.series_page(store, series, lo, hi, limit=limit, offset=offset, columns=LLM_CALLS_SCHEMA.names)
    where, params = series_predicate(series)
    cur = con.execute(
        f"SELECT * FROM llm_calls WHERE {where} AND start_time >= ? AND start_time < ?"
        " ORDER BY start_time, trace_id, span_id LIMIT ? OFFSET ?",
        [*params, lo, hi, limit, offset],
    )
    return [d[0] for d in cur.description], cur.fetchall()


def last_call_start(con: duckdb.DuckDBPyConnection, series: Mapping[str, Any]) -> datetime | None:
    """When the series' most recent call started (None without calls)."""
    if (store := bound()) is not None:
        return ch.last_call_start(store, series)
    where, params = series_predicate(series)
    return con.execute(f"SELECT max(start_time) FROM llm_calls WHERE {where}", params).fetchall()[0][0]


def peer_series_count(con: duckdb.DuckDBPyConnection, provider: str, lo: datetime, hi: datetime, *,
                      besides: Sequence[Any]) -> int:  # fmt: skip
    """How many series of ``provider`` other than ``besides`` = (service, request_model, operation) had a call
    starting in [lo, hi)."""
    if (store := bound()) is not None:
        return ch.peer_series_count(store, provider, lo, hi, besides=besides)
    return int(
        con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT service, request_model, operation FROM llm_calls"
            " WHERE provider = ? AND start_time >= ? AND start_time < ?"
            " AND NOT (service IS NOT DISTINCT FROM ? AND request_model IS NOT DISTINCT FROM ?"
            " AND operation IS NOT DISTINCT FROM ?))",
            [provider, lo, hi, *besides],
        ).fetchall()[0][0]
    )


def data_span(con: duckdb.DuckDBPyConnection) -> Span | None:
    """(first, last) start time over all stored calls, as stored; None when there are none."""
    if (store := bound()) is not None:
        return ch.data_span(store)
    lo, hi = con.execute("SELECT min(start_time), max(start_time) FROM llm_calls").fetchall()[0]
    return None if lo is None else (lo, hi)


def batches_span(con: duckdb.DuckDBPyConnection, batch_ids: Sequence[str]) -> Span | None:
    """(first, last) start time of the calls of the given ingest batches; None when they hold none."""
    if (store := bound()) is not None:
        return ch.batches_span(store, batch_ids)
    lo, hi = con.execute("SELECT min(start_time), max(start_time) FROM llm_calls WHERE ingest_batch IN"
                         " (SELECT unnest(?::VARCHAR[]))", [list(batch_ids)]).fetchall()[0]  # fmt: skip
    return None if lo is None else (lo, hi)


def calls_by_id(con: duckdb.DuckDBPyConnection, pairs: Sequence[tuple[str, str]], *, since: datetime | None = None,
               until: datetime | None = None) -> tuple[list[str], list[tuple]]:  # fmt: skip
    """:data:`EXEMPLAR_COLUMNS` of the calls keyed ``(trace_id, span_id)`` (exemplars stored without them).

    ``since``/``until`` (the episode, say) let DuckDB skip every row group outside it instead of scanning the table.
    The ids are literal ``IN`` lists, which DuckDB pushes into the scan as filters: only matching rows are read
    past the id columns (a ``(trace_id, span_id) IN (subquery)`` is a hash join that materializes every column of
    every row in the window first, several times slower on a busy episode). Exact pairs are kept afterwards.
    """
    if not pairs:
        return [], []
    if (store := bound()) is not None:
        return ch.calls_by_id(store, pairs, EXEMPLAR_COLUMNS, since=since, until=until)
    traces, spans = sorted({t for t, _ in pairs}), sorted({s for _, s in pairs})
    cur = con.execute(
        f"SELECT {', '.join(EXEMPLAR_COLUMNS)} FROM llm_calls WHERE trace_id IN ({', '.join('?' * len(traces))})"
        f" AND span_id IN ({', '.join('?' * len(spans))})"
        " AND start_time >= coalesce(?, '-infinity'::TIMESTAMPTZ)"
        " AND start_time < coalesce(?, 'infinity'::TIMESTAMPTZ)",
        [*traces, *spans, since, until],
    )
    wanted = set(pairs)
    return [d[0] for d in cur.description], [row for row in cur.fetchall() if (row[0], row[1]) in wanted]


def unrolled_batches(con: duckdb.DuckDBPyConnection) -> list[tuple[str, datetime, datetime]]:
    """Ingest batches with calls but no ``rollup_batches`` row, with their calls' time span, oldest first.

    Calls without a batch count as batch ``''``."""
    if (store := bound()) is not None:
        # Only rows written since the last refresh (less a margin for a long refresh and clock skew) can belong
        # to a batch not rolled up yet: ClickHouse scans the recent versions, not the whole table.
        last = con.execute("SELECT max(rolled_up_at) FROM rollup_batches").fetchall()[0][0]
        cutoff = None if last is None else last - UNROLLED_MARGIN
        rolled = {b for (b,) in con.execute("SELECT ingest_batch FROM rollup_batches WHERE rolled_up_at >= ?",
                                            [cutoff]).fetchall()} if cutoff is not None else set()  # fmt: skip
        return [row for row in ch.batch_spans(store, written_since=cutoff) if row[0] not in rolled]
    return con.execute(
        """SELECT coalesce(ingest_batch, '') AS batch, min(start_time), max(start_time) FROM llm_calls
           WHERE coalesce(ingest_batch, '') NOT IN (SELECT ingest_batch FROM rollup_batches)
           GROUP BY 1 ORDER BY 2"""
    ).fetchall()


def batches_written_since(con: duckdb.DuckDBPyConnection, since: datetime) -> list[tuple[str, datetime, datetime]]:
    """Ingest batches written at or after ``since``, with their calls' time span (late calls of any time)."""
    if (store := bound()) is not None:
        return ch.batch_spans(store, written_since=since)
    return con.execute(
        """SELECT coalesce(ingest_batch, '') AS batch, min(start_time), max(start_time) FROM llm_calls
           WHERE ingest_batch IN (SELECT id FROM ingest_batches WHERE started_at >= ?)
           GROUP BY 1 ORDER BY 2""",
        [since],
    ).fetchall()


def latest_calls(con: duckdb.DuckDBPyConnection, *, service: str | None, limit: int) -> tuple[list[str], list[tuple]]:
    """(column names, rows): the newest calls (of one service, if given), a few columns each (``spanprism calls``)."""
    if (store := bound()) is not None:
        return ch.latest_calls(store, service=service, limit=limit)
    where, params = ("WHERE service = ?", [service]) if service else ("", [])
    cur = con.execute(
        "SELECT start_time, service, provider, request_model, region, status, streaming, input_tokens, "
        "cache_read_tokens, output_tokens, round(ttft_ms, 1) AS ttft_ms, round(itl_ms, 2) AS itl_ms, "
        "round(duration_ms, 1) AS duration_ms, source_convention "
        f"FROM llm_calls {where} ORDER BY start_time DESC LIMIT ?",
        [*params, limit],
    )
    return [d[0] for d in cur.description], cur.fetchall()


_SUMMARY_SQL = """
SELECT service, provider, request_model, operation, count(*) AS calls,
       round(avg(CASE WHEN status = 'error' THEN 1 ELSE 0 END) * 100, 1) AS error_pct,
       round(quantile_cont(duration_ms, 0.95), 0) AS e2e_p95_ms,
       round(quantile_cont(ttft_ms, 0.5), 0) AS ttft_p50_ms, round(quantile_cont(ttft_ms, 0.95), 0) AS ttft_p95_ms,
       round(quantile_cont(itl_ms, 0.5), 1) AS itl_p50_ms,
       round(median(input_tokens), 0) AS input_p50,
       round(sum(cache_read_tokens) / nullif(sum(input_tokens) FILTER (WHERE cache_read_tokens IS NOT NULL), 0), 3)
         AS cache_read_ratio
FROM llm_calls GROUP BY ALL ORDER BY calls DESC
"""


def series_summary(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
    """(column names, rows): per series, calls, error share, latency quantiles and cache figures
    (``spanprism summary``)."""
    if (store := bound()) is not None:
        return ch.series_summary(store)
    cur = con.execute(_SUMMARY_SQL)
    return [d[0] for d in cur.description], cur.fetchall()


def load_calls(con: duckdb.DuckDBPyConnection, keys: list[str], *, start_s: int, end_s: int,
               series_columns: Iterable[str]) -> pd.DataFrame:  # fmt: skip
    """Latencies and tokens of the ok calls of ``keys`` in [start_s, end_s) (per-call detection of sparse series),
    one query joined to ``series`` on ``series_columns`` (those naming a series): ``series_key``, ``t`` (epoch s),
    ``duration_ms``, ``ttft_ms``, ``itl_ms``, ``input_tokens``, ``output_tokens``."""
    if (store := bound()) is not None:
        return ch.load_calls(store, keys, start_s=start_s, end_s=end_s, series_columns=series_columns)
    on = " AND ".join(f"c.{c} IS NOT DISTINCT FROM s.{c}" for c in series_columns)
    return con.execute(
        f"""SELECT s.series_key, epoch_us(c.start_time) / 1e6 AS t, c.duration_ms, c.ttft_ms, c.itl_ms,
                   c.input_tokens, c.output_tokens
            FROM llm_calls c JOIN (SELECT * FROM series WHERE series_key IN (SELECT unnest($keys))) s ON {on}
            WHERE coalesce(c.status, 'ok') <> 'error'
              AND c.start_time >= to_timestamp($lo) AND c.start_time < to_timestamp($hi)""",
        {"keys": keys, "lo": start_s, "hi": end_s},
    ).df()
