"""``source`` mode: follow the OpenTelemetry Collector's ClickHouse span table (``otel_traces``) into ``llm_calls``.

A team that already ships spans with the contrib ``clickhouseexporter`` has them in ``otel_traces`` (DDL below,
exactly the exporter's). :func:`follow` reads that table in time slices, keeps the candidate LLM spans (a superset
of :func:`~spanprism.ingest.conventions.is_llm_span`, evaluated in ClickHouse on the attribute keys), turns each row
back into the :class:`~spanprism.ingest.records.SpanRecord` an OTLP decoder would have made (attribute values are
strings there, as the exporter writes them; the normalizer's coercion reads every honest spelling), normalizes them
with the same Python normalizer as every other input (every convention, TTFT from the span events) and stores them
through the one writer (``ingest/load.py``), which on a bound ClickHouse store folds, deduplicates and inserts.
Calls chained through non-LLM spans (an LLM span, an app step, an HTTP client span, the SDK's LLM span) are
followed too: :func:`read_links` reads just the parent links of the non-LLM spans in the traces that need them.

Progress is a watermark per source table (``spanprism_source_watermarks``, in ClickHouse beside the data), moved
only after a slice is stored. Each pass starts ``late_s`` before it, so spans the Collector writes late are still
read; re-read spans are duplicates the writer neither counts as new nor inserts. A pass killed at any point
restarts from the last stored slice: nothing is lost (the slice is read again) and nothing is duplicated.
"""

from __future__ import annotations

import base64
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from spanprism.ingest.conventions import USAGE_PRESENCE_KEYS
from spanprism.ingest.identity import SEARCH_WINDOW_US
from spanprism.ingest.limits import Limits
from spanprism.ingest.load import BatchCounts, store_batch
from spanprism.ingest.normalize import normalize
from spanprism.ingest.records import Batch, SpanEvent, SpanRecord
from spanprism.models.clickhouse import ClickHouseStore, lits, new_version

# The exporter's table, copied from open-telemetry/opentelemetry-collector-contrib
# exporter/clickhouseexporter/internal/sqltemplates/traces_table.sql (commit 2bf6b9e1f8c8716ab54eaac1635e56b4d0649900),
# Copyright The OpenTelemetry Authors, Apache License 2.0 (the same licence as spanprism). Its template rendered for
# one table: no cluster, no full-text-search indexes, ``MergeTree()``, no TTL.
OTEL_TRACES_DDL = """CREATE TABLE IF NOT EXISTS {table} (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(T64, ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    ResourceAttributeItems Array(String) ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2), CAST(ResourceAttributes, 'Array(Tuple(String, String))')),
    SpanAttributeItems Array(String) ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2), CAST(SpanAttributes, 'Array(Tuple(String, String))')),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1,
    INDEX idx_lower_span_name lower(SpanName) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8
) ENGINE = MergeTree()
PARTITION BY toDate(Timestamp)
PRIMARY KEY (ServiceName, SpanName, toDateTime(Timestamp))
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp), Timestamp)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1"""  # noqa: E501  (the exporter's text, unchanged)

WATERMARKS = "spanprism_source_watermarks"
_WATERMARKS_DDL = f"""CREATE TABLE IF NOT EXISTS {WATERMARKS} (
  source String, watermark_ns Int64, updated_ns UInt64
) ENGINE = ReplacingMergeTree(updated_ns) ORDER BY source"""

#: Attribute keys whose presence makes a span a candidate: every marker ``is_llm_span`` decides on, and the token
#: keys it falls back to. A candidate may still be skipped by the normalizer; a non-candidate never is an LLM span.
CANDIDATE_KEYS: tuple[str, ...] = tuple(sorted({"gen_ai.operation.name", "openinference.span.kind",
                                                "llm.request.type", "langfuse.observation.type", "ai.operationId"}
                                               | USAGE_PRESENCE_KEYS))  # fmt: skip
_KINDS = {"Unspecified": 0, "Internal": 1, "Server": 2, "Client": 3, "Producer": 4, "Consumer": 5}
_STATUS = {"Unset": 0, "Ok": 1, "Error": 2}
_COLUMNS = (
    "TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, ResourceAttributes, ScopeName, SpanAttributes,"
    " toUnixTimestamp64Nano(Timestamp) AS start_ns, Duration, StatusCode, StatusMessage,"
    " arrayMap(t -> toUnixTimestamp64Nano(t), Events.Timestamp) AS event_ns, Events.Name AS event_name,"
    " Events.Attributes AS event_attributes"
)


def otel_traces_ddl(table: str = "otel_traces") -> str:
    """The exporter's ``CREATE TABLE`` for ``table``."""
    return OTEL_TRACES_DDL.format(table=table)


def candidate_filter() -> str:
    """ClickHouse condition keeping the spans that may be LLM calls (see :data:`CANDIDATE_KEYS`)."""
    keys = ", ".join(f"'{k}'" for k in CANDIDATE_KEYS)
    return f"(SpanName = 'llm_request' OR hasAny(mapKeys(SpanAttributes), [{keys}]))"


def _revived(pairs: list[tuple[str, str]] | None) -> dict[str, Any]:
    """Map values as the normalizer reads them: the exporter writes array and map values as JSON text, which is
    parsed back (a header list ``["apim-1"]`` is a list again); scalars stay strings (coercion reads those)."""
    if not pairs:
        return {}
    out = dict(pairs)
    for key, value in pairs:
        if value.startswith(("[", "{")) and value.endswith(("]", "}")):
            with contextlib.suppress(orjson.JSONDecodeError):  # text that only looks like JSON stays text
                out[key] = orjson.loads(value)
    return out


def _raw(row: dict[str, Any]) -> Callable[[], bytes]:
    return lambda: orjson.dumps(row, default=str)


def span_records(rows: pa.Table, source: str) -> list[SpanRecord]:
    """``otel_traces`` rows (as read by :func:`read_slice`) as decoded span records."""
    spans: list[SpanRecord] = []
    for row in rows.to_pylist():
        resource = _revived(row["ResourceAttributes"])
        if row["ServiceName"] and "service.name" not in resource:
            resource["service.name"] = row["ServiceName"]
        events: list[SpanEvent] = [
            {"name": name, "time_ns": ns, "attributes": _revived(attrs) if attrs else {}}
            for ns, name, attrs in zip(row["event_ns"], row["event_name"], row["event_attributes"], strict=True)
        ]
        spans.append({
            "trace_id": row["TraceId"].lower(), "span_id": row["SpanId"].lower(),
            "parent_span_id": row["ParentSpanId"].lower() or None, "name": row["SpanName"],
            "kind": _KINDS.get(row["SpanKind"], 0), "start_ns": int(row["start_ns"]),
            "end_ns": int(row["start_ns"]) + int(row["Duration"]),
            "attributes": _revived(row["SpanAttributes"]), "resource": resource, "scope": row["ScopeName"] or "",
            "events": events, "status_code": _STATUS.get(row["StatusCode"], 0),
            "status_message": row["StatusMessage"] or "", "source": source,
            "location": f"trace {row['TraceId']} span {row['SpanId']}", "raw": _raw(row),
        })  # fmt: skip
    return spans


@dataclass(frozen=True)
class Part:
    """One of ``of`` followers of one table: it reads the traces whose id hashes to ``index`` (``cityHash64`` of
    ``TraceId`` modulo ``of``). Every span of a trace (both LLM spans of one call, the non-LLM spans between them)
    falls in the same part, so each follower folds whole calls, as one follower would."""

    index: int
    of: int

    @classmethod
    def parse(cls, text: str) -> Part:
        """``"I/N"`` (``0 <= I < N``), e.g. ``1/3``; a clear error otherwise."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise ValueError(f"source part {text!r}: expected I/N with 0 <= I < N (e.g. 0/3, 1/3, 2/3)")
        return cls(int(m.group(1)), int(m.group(2)))

    def key(self, table: str) -> str:
        """The part's watermark key (the whole table's is the table name)."""
        return table if self.of == 1 else f"{table}#{self.index}/{self.of}"

    def condition(self) -> str:
        return "1" if self.of == 1 else f"cityHash64(TraceId) % {self.of} = {self.index}"


WHOLE = Part(0, 1)


def read_slice(store: ClickHouseStore, table: str, lo_ns: int, hi_ns: int, part: Part = WHOLE) -> pa.Table:
    """The candidate spans of ``table`` with ``lo_ns <= Timestamp < hi_ns`` (of the traces of ``part``)."""
    return store.query_arrow(
        f"SELECT {_COLUMNS} FROM {table} WHERE Timestamp >= fromUnixTimestamp64Nano({int(lo_ns)}, 'UTC')"
        f" AND Timestamp < fromUnixTimestamp64Nano({int(hi_ns)}, 'UTC') AND {candidate_filter()}"
        f" AND {part.condition()}"
    )


def read_links(store: ClickHouseStore, table: str, rows: pa.Table, lo_ns: int, hi_ns: int) -> list[SpanRecord]:
    """The non-LLM spans that may sit between two LLM spans of one call (a framework step, an HTTP client span), as
    bare span records: only their ids, parent, kind and times are read, and the normalizer keeps only their parent
    links (``span_links``), as it does for the same spans in a file.

    Looked up only in the traces where a candidate span of the slice (``rows``) has a parent that is not a candidate
    of the slice, within the fold's search window around the slice: the chain's other LLM span may be stored by an
    earlier slice or pass, and the fold finds it there."""
    if not rows.num_rows:
        return []
    candidates = set(rows.column("SpanId").to_pylist())
    traces = sorted({t for t, parent in zip(rows.column("TraceId").to_pylist(), rows.column("ParentSpanId").to_pylist(),
                                            strict=True) if parent and parent not in candidates})  # fmt: skip
    if not traces:
        return []
    pad = SEARCH_WINDOW_US * 1000
    found = store.query_arrow(
        f"SELECT TraceId, SpanId, ParentSpanId, SpanKind, toUnixTimestamp64Nano(Timestamp) AS start_ns, Duration"
        f" FROM {table} WHERE TraceId IN ({lits(traces)})"
        f" AND Timestamp >= fromUnixTimestamp64Nano({int(lo_ns) - pad}, 'UTC')"
        f" AND Timestamp < fromUnixTimestamp64Nano({int(hi_ns) + pad}, 'UTC')"
        f" AND ParentSpanId != '' AND SpanKind IN ('Unspecified', 'Internal', 'Client') AND NOT {candidate_filter()}"
    )
    source = f"clickhouse:{table}"
    return [
        {"trace_id": row["TraceId"].lower(), "span_id": row["SpanId"].lower(),
         "parent_span_id": row["ParentSpanId"].lower(), "name": "", "kind": _KINDS.get(row["SpanKind"], 0),
         "start_ns": int(row["start_ns"]), "end_ns": int(row["start_ns"]) + int(row["Duration"]), "attributes": {},
         "resource": {}, "scope": "", "events": [], "status_code": 0, "status_message": "", "source": source,
         "location": f"trace {row['TraceId']} span {row['SpanId']}", "raw": _raw(row)}
        for row in found.to_pylist()
    ]  # fmt: skip


def watermark(store: ClickHouseStore, table: str, part: Part = WHOLE) -> int | None:
    """The stored watermark of ``table`` (ns since the epoch), or of one ``part`` of it: every span of it before
    that time that had arrived is stored.

    A part without a watermark of its own (the followers were re-split, or one follower became several) starts
    where a split whose every part has a watermark has stored everything: the oldest watermark of its parts (of
    the best such split). Nothing is lost (a split with a part that never ran covers nothing), and re-reading what
    another split stored duplicates nothing (re-read spans are recognised); with no complete split, from the start."""
    store.command(_WATERMARKS_DDL)
    rows = store.rows(f"SELECT source, watermark_ns FROM {WATERMARKS} FINAL"
                      f" WHERE source = '{table}' OR startsWith(source, '{table}#')")  # fmt: skip
    marks = {str(k): int(v) for k, v in rows}
    if part.key(table) in marks:
        return marks[part.key(table)]
    covered = []
    for of in {1} | {int(k.rsplit("/", 1)[1]) for k in marks if "#" in k and k.rsplit("/", 1)[1].isdigit()}:
        keys = [Part(i, of).key(table) for i in range(of)]
        if all(k in marks for k in keys):
            covered.append(min(marks[k] for k in keys))
    return max(covered) if covered else None


def _save_watermark(store: ClickHouseStore, table: str, ns: int) -> None:
    rows = pa.table({"source": [table], "watermark_ns": pa.array([ns], pa.int64()),
                     "updated_ns": pa.array([new_version()], pa.uint64())})  # fmt: skip
    store.insert(WATERMARKS, rows)


@dataclass
class SourceRun:
    """What one :func:`follow` pass did."""

    slices: int = 0
    spans_read: int = 0
    counts: list[BatchCounts] = field(default_factory=list)
    watermark_ns: int | None = None

    @property
    def calls_stored(self) -> int:
        return sum(c.calls_stored for c in self.counts)

    @property
    def duplicates(self) -> int:
        return sum(c.duplicates for c in self.counts)


def follow(con: duckdb.DuckDBPyConnection, store: ClickHouseStore, *, table: str = "otel_traces", late_s: int = 600,
           slice_s: int = 300, until_ns: int | None = None, max_slices: int | None = None,
           tenant_attribute: str | None = None, limits: Limits | None = None,
           part: Part = WHOLE) -> SourceRun:  # fmt: skip
    """One pass: from the watermark minus ``late_s`` (or the table's first span) up to ``until_ns`` (default: the
    newest span now in the table), in ``slice_s`` slices, each stored and then marked done.

    ``max_slices`` stops early (the next pass goes on from there). ``con`` is the DuckDB file that keeps the ingest
    batches and the quarantine; the calls go where the writer is bound (ClickHouse). ``part`` splits the table
    between several followers (processes or hosts, each with its own DuckDB file): each reads its share of the
    traces and keeps its own watermark."""
    run = SourceRun()
    mark = watermark(store, table, part)
    first, last, n = store.rows(f"SELECT toUnixTimestamp64Nano(min(Timestamp)), toUnixTimestamp64Nano(max(Timestamp)),"
                                f" count() FROM {table}")[0]  # fmt: skip
    if not n:
        return run
    hi = int(until_ns) if until_ns is not None else int(last) + 1
    lo = int(first) if mark is None else max(int(first), mark - late_s * 1_000_000_000)
    step = slice_s * 1_000_000_000
    source = f"clickhouse:{table}"
    while lo < hi and (max_slices is None or run.slices < max_slices):
        end = min(lo + step, hi)
        rows = read_slice(store, table, lo, end, part)
        spans = span_records(rows, source) + read_links(store, table, rows, lo, end)
        norm = normalize(spans, tenant_attribute=tenant_attribute, limits=limits)
        batch = Batch(source=source, calls=norm.table, quarantined=norm.quarantined, spans_seen=len(spans),
                      non_llm_skipped=norm.non_llm_skipped, conventions=dict(norm.conventions),
                      links=norm.links)  # fmt: skip
        run.counts.append(store_batch(con, batch))
        if mark is None or end > mark:  # never move back: a re-read of the late window leaves the mark where it was
            _save_watermark(store, part.key(table), end)
            mark = end
        run.slices += 1
        run.spans_read += len(spans)
        lo = end
    run.watermark_ns = mark
    return run


def follow_forever(con: duckdb.DuckDBPyConnection, store: ClickHouseStore, *, every_s: float,
                   stop: Callable[[], bool] = lambda: False, **kwargs: Any) -> None:  # fmt: skip
    """:func:`follow` every ``every_s`` seconds until ``stop()``."""
    while not stop():
        follow(con, store, **kwargs)
        time.sleep(every_s)


def exporter_value(value: Any) -> str:
    """An attribute value as the exporter stores it (pcommon ``Value.AsString``): what :func:`span_records` reads."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        import numpy as np

        return np.format_float_positional(value, trim="-") if np.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return orjson.dumps(value).decode()


_KIND_NAMES = {v: k for k, v in _KINDS.items()}
_STATUS_NAMES = {v: k for k, v in _STATUS.items()}
_MAP = pa.map_(pa.string(), pa.string())
_NS = pa.timestamp("ns", tz="UTC")


def _attributes(values: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, exporter_value(v)) for k, v in values.items() if v is not None]


def exporter_rows(spans: list[SpanRecord]) -> pa.Table:
    """Spans in the exporter's column layout (what the Collector would insert into ``otel_traces``): tests and the
    benchmark fill the table with it; the product only reads that table."""
    events = [s["events"] for s in spans]
    columns: dict[str, pa.Array] = {
        "Timestamp": pa.array([s["start_ns"] for s in spans], pa.int64()).cast(_NS),
        "TraceId": pa.array([s["trace_id"] for s in spans], pa.string()),
        "SpanId": pa.array([s["span_id"] for s in spans], pa.string()),
        "ParentSpanId": pa.array([s["parent_span_id"] or "" for s in spans], pa.string()),
        "TraceState": pa.array([""] * len(spans), pa.string()),
        "SpanName": pa.array([s["name"] for s in spans], pa.string()),
        "SpanKind": pa.array([_KIND_NAMES.get(s["kind"], "Unspecified") for s in spans], pa.string()),
        "ServiceName": pa.array([exporter_value(s["resource"].get("service.name", "")) for s in spans], pa.string()),
        "ResourceAttributes": pa.array([_attributes(s["resource"]) for s in spans], _MAP),
        "ScopeName": pa.array([s["scope"] for s in spans], pa.string()),
        "ScopeVersion": pa.array([""] * len(spans), pa.string()),
        "SpanAttributes": pa.array([_attributes(s["attributes"]) for s in spans], _MAP),
        "Duration": pa.array([max(s["end_ns"] - s["start_ns"], 0) for s in spans], pa.uint64()),
        "StatusCode": pa.array([_STATUS_NAMES.get(s["status_code"], "Unset") for s in spans], pa.string()),
        "StatusMessage": pa.array([s["status_message"] for s in spans], pa.string()),
        "Events.Timestamp": pa.array([[e["time_ns"] for e in ev] for ev in events], pa.list_(pa.int64())).cast(
            pa.list_(_NS)
        ),
        "Events.Name": pa.array([[e["name"] for e in ev] for ev in events], pa.list_(pa.string())),
        "Events.Attributes": pa.array([[_attributes(e["attributes"]) for e in ev] for ev in events], pa.list_(_MAP)),
    }
    return pa.table(columns)


def spans_of_files(paths: list[str]) -> list[SpanRecord]:
    """Every span of OTLP export files (folders and globs too), decoded as the file ingest decodes them (tests and
    the benchmark fill ``otel_traces`` with these, to compare against ingesting the files)."""
    from spanprism.ingest.decode import decode_chunk, iter_chunks, open_input
    from spanprism.ingest.pipeline import expand_sources

    files, _ = expand_sources(paths)
    spans: list[SpanRecord] = []
    for path in files:
        with open_input(path) as stream:
            for chunk in iter_chunks(stream, path):
                spans.extend(decode_chunk(chunk).spans)
    return spans
