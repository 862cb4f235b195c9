"""The ClickHouse store of ``llm_calls``: its tables, its client, and which engine holds the calls in this process.

DuckDB is the default and stays the home of everything small (series, rollups, baselines, regressions, service
state). With ``SPANPRISM_CLICKHOUSE_URL`` the big table, ``llm_calls`` (and ``llm_call_spans``, the members of
multi-span calls), lives in ClickHouse instead: the edge (CLI, server) calls :func:`bind` once, and the one writer
(``ingest/load.py``) and the one reader (``attribution/store/calls.py``) then talk to ClickHouse through
``clickhouse-connect`` over HTTP, with Arrow in both directions.

``llm_calls`` is a ``ReplacingMergeTree(_version, _deleted)``: its sorting key is (series, start, trace_id,
span_id), and since a span's series and start are functions of the span, rows with the same ``(trace_id, span_id)``
collapse to the newest version. A call row that folding rewrites (``ingest/fold.py``) is retired by a tombstone
(``_deleted = 1``) carrying the old row's key. Every read uses ``FINAL``, so a query sees each call once even
before ClickHouse merges the parts; re-inserting a row changes nothing a reader sees.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from spanprism.models.schema import CALL_SPAN_COLUMNS, LLM_CALLS_SCHEMA, SERIES_COLUMNS
from spanprism.models.times import as_utc

#: Bookkeeping columns of both ClickHouse tables (never part of the canonical record).
VERSION, DELETED = "_version", "_deleted"

_TYPES = {
    pa.string(): "String",
    pa.float64(): "Float64",
    pa.int64(): "Int64",
    pa.int32(): "Int32",
    pa.bool_(): "Bool",
}


def _ch_type(name: str, typ: pa.DataType, required: tuple[str, ...]) -> str:
    base = "DateTime64(6, 'UTC')" if pa.types.is_timestamp(typ) else _TYPES[typ]
    return base if name in required else f"Nullable({base})"


def _columns(names: tuple[str, ...], required: tuple[str, ...]) -> str:
    types = {f.name: f.type for f in LLM_CALLS_SCHEMA} | {"call_trace_id": pa.string(), "call_span_id": pa.string()}
    return ",\n  ".join(f"`{n}` {_ch_type(n, types[n], required)}" for n in names)


def llm_calls_ddl(table: str = "llm_calls") -> str:
    """``CREATE TABLE`` of ``llm_calls``: partitioned by day, ordered by series then time, one row per span id."""
    cols = _columns(tuple(LLM_CALLS_SCHEMA.names), ("trace_id", "span_id", "start_time"))
    order = ", ".join((*SERIES_COLUMNS, "start_time", "trace_id", "span_id"))
    return f"""CREATE TABLE IF NOT EXISTS {table} (
  {cols},
  `{VERSION}` UInt64,
  `{DELETED}` UInt8,
  INDEX idx_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 1
) ENGINE = ReplacingMergeTree({VERSION}, {DELETED})
PARTITION BY toDate(start_time)
ORDER BY ({order})
SETTINGS allow_nullable_key = 1"""


def llm_call_spans_ddl(table: str = "llm_call_spans") -> str:
    """``CREATE TABLE`` of ``llm_call_spans`` (every span of a multi-span call, keyed to its call)."""
    required = ("trace_id", "span_id", "start_time", "call_trace_id", "call_span_id")
    return f"""CREATE TABLE IF NOT EXISTS {table} (
  {_columns(CALL_SPAN_COLUMNS, required)},
  `{VERSION}` UInt64,
  `{DELETED}` UInt8
) ENGINE = ReplacingMergeTree({VERSION}, {DELETED})
PARTITION BY toDate(start_time)
ORDER BY (trace_id, span_id, call_trace_id, call_span_id)"""


def lit(value: Any) -> str:
    """A ClickHouse literal of a Python value (str, int, float, bool, None, datetime)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        ts = as_utc(value)
        micros = int(ts.timestamp()) * 1_000_000 + ts.microsecond
        return f"fromUnixTimestamp64Micro({micros}, 'UTC')"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def lits(values: Iterable[Any]) -> str:
    """A comma-separated list of literals (for ``IN (…)``)."""
    return ", ".join(lit(v) for v in values)


def new_version() -> int:
    """A row version: nanoseconds since the epoch (a later write wins; ties cannot reorder one writer's writes)."""
    return time.time_ns()


#: The fold's lookup of a 100k-row write unit lists its trace ids literally (≈3.4 MB of SQL): above the 256 KiB
#: default. FINAL reads partitions independently (a call never spans two days' partitions), which lets them run
#: in parallel.
_QUERY_SETTINGS = {"max_query_size": 64 << 20, "do_not_merge_across_partitions_select_final": 1}


@dataclass
class ClickHouseStore:
    """A ``clickhouse-connect`` client on one database, with the few operations the store needs."""

    client: Any
    url: str

    def query_arrow(self, sql: str, parameters: dict[str, Any] | None = None) -> pa.Table:
        """Run a SELECT; the rows as an Arrow table (strings as strings)."""
        return self.client.query_arrow(sql, parameters=parameters, use_strings=True, settings=_QUERY_SETTINGS)

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Run a SELECT; the rows as tuples."""
        return self.query(sql, parameters).result_rows

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """Run a SELECT; clickhouse-connect's result (``column_names``, ``result_rows``)."""
        return self.client.query(sql, parameters=parameters, settings=_QUERY_SETTINGS)

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """Run a statement that returns nothing worth reading (DDL, ``OPTIMIZE``)."""
        return self.client.command(sql, parameters=parameters)

    def insert(self, table: str, rows: pa.Table) -> None:
        """Insert an Arrow table (one HTTP request; ClickHouse makes it one part per partition touched)."""
        if rows.num_rows:
            self.client.insert_arrow(table, rows)

    def ensure_schema(self) -> None:
        """Create ``llm_calls`` and ``llm_call_spans`` when missing (idempotent)."""
        self.command(llm_calls_ddl())
        self.command(llm_call_spans_ddl())

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def connect(url: str, *, ensure_schema: bool = True) -> ClickHouseStore:
    """Open ``url`` (``http[s]://user:password@host:port/database``) with ``clickhouse-connect``, Arrow in and out.

    Compression is left to the transport (the HTTP endpoint decides); inserts are Arrow (``insert_arrow``), so
    nothing depends on the client's Native-format codecs."""
    import clickhouse_connect

    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    client = clickhouse_connect.get_client(
        host=parts.hostname or "localhost",
        port=parts.port or (8443 if secure else 8123),
        username=urllib.parse.unquote(parts.username or "default"),
        password=urllib.parse.unquote(parts.password or ""),
        database=parts.path.strip("/") or "default",
        secure=secure,
        compress=False,
        autogenerate_session_id=False,
    )
    store = ClickHouseStore(client=client, url=url)
    if ensure_schema:
        store.ensure_schema()
    return store


_BOUND: ClickHouseStore | None = None


def bind(store: ClickHouseStore | None) -> ClickHouseStore | None:
    """Make ``store`` hold ``llm_calls`` for this process (None: back to DuckDB); returns the previous binding.

    Called at the edge (CLI, server start) from ``SPANPRISM_CLICKHOUSE_URL``; the writer and the reader ask
    :func:`bound` and keep their DuckDB path when it is None."""
    global _BOUND
    previous, _BOUND = _BOUND, store
    return previous


def bound() -> ClickHouseStore | None:
    """The ClickHouse store holding ``llm_calls`` in this process, or None when DuckDB does."""
    return _BOUND
