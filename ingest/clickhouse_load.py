"""The writer's ClickHouse path: fold a write unit's calls against the stored ones and insert Arrow batches.

Folding (``ingest/fold.py``) is the same code as on DuckDB, run on a scratch in-memory DuckDB that holds the unit's
new rows and the stored rows they can belong with: the stored calls and members sharing a trace id or a provider
response id with the new rows, within the fold's search window of their start times (read from ClickHouse with
``FINAL``). Whatever the fold leaves in the scratch tables is the truth for those keys:

* new call rows (and rewritten ones) are inserted with a fresh ``_version``;
* stored call rows the fold rewrote or folded into another call are retired by a tombstone (``_deleted = 1``,
  same sorting key, an older version than any row that replaces it);
* members likewise in ``llm_call_spans``.

Chains through non-LLM spans: ``span_links`` stays in the local DuckDB file (bookkeeping the fold reads, written by
``ingest/load.py`` with the batch rows). The scratch gets the stored links of the traces involved, within the same
window, and the unit's new links go to the fold as on DuckDB; the window and the traces looked up in ClickHouse
cover the new links too, so a unit of links alone can still join two stored calls.

The weak rules (``ingest/identity.py``) pair spans that share no id: an SDK span and an instrumentation span without
a response id (a failed call: OpenLLMetry puts them in two traces), Logfire's request span and its stream log. For
those the stored rows of the unit's (service, request model) pairs are read back too, within the rule's own time
window of the unit's candidates (SDK spans, rows without a response id, stream logs), so the second emitter's
span folds into the first one's stored call whichever arrives first (``tests/test_clickhouse_fold.py``).

A span stored before has the same trace id and start time, so it is always among the rows read back: it counts as
a duplicate and is not inserted again (and were it inserted, ``ReplacingMergeTree`` would keep one row).
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.ingest.fold import fold_calls
from spanprism.ingest.fold_gate import unit_may_pair
from spanprism.ingest.identity import (
    SDK_CONVENTION,
    SEARCH_WINDOW_US,
    STREAM_LEAD_US,
    STREAM_LOG_PREFIX,
    TWIN_LEAD_US,
)
from spanprism.models.clickhouse import DELETED, VERSION, ClickHouseStore, lits, new_version
from spanprism.models.schema import CALL_SPAN_COLUMNS, LLM_CALLS_SCHEMA, SPAN_LINKS_SCHEMA

_DUCK_TYPES = {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int64(): "BIGINT", pa.int32(): "INTEGER",
               pa.bool_(): "BOOLEAN"}  # fmt: skip
_SPANS_SCHEMA = pa.schema(
    [f for f in LLM_CALLS_SCHEMA if f.name != "merged_span_ids"]
    + [pa.field("call_trace_id", pa.string()), pa.field("call_span_id", pa.string())]
)
_CALL_COLS = ", ".join(f"`{n}`" for n in LLM_CALLS_SCHEMA.names)
_SPAN_COLS = ", ".join(f"`{n}`" for n in CALL_SPAN_COLUMNS)


def _duck_ddl(table: str, schema: pa.Schema) -> str:
    cols = ", ".join(
        f"{f.name} {'TIMESTAMPTZ' if pa.types.is_timestamp(f.type) else _DUCK_TYPES[f.type]}" for f in schema
    )
    return f"CREATE TABLE {table} ({cols}, PRIMARY KEY (trace_id, span_id))"


#: Up to this many stored rows in a unit's search window, their ids are read and matched here; above it, the unit's
#: ids are sent to ClickHouse as literal lists instead (a 100k-row unit: ≈3.4 MB of SQL to parse).
SCAN_LIMIT = 300_000


def _present(store: ClickHouseStore, new: pa.Table, window: str) -> tuple[list[str], list[str]]:
    """The unit's trace ids and response ids that stored calls or members in ``window`` share."""
    traces = pc.unique(new.column("trace_id"))
    responses = pc.drop_null(pc.unique(new.column("response_id")))
    count = "SELECT (SELECT count() FROM llm_calls WHERE {w}) + (SELECT count() FROM llm_call_spans WHERE {w})"
    if store.rows(count.format(w=f"_deleted = 0 AND {window}"))[0][0] > SCAN_LIMIT:
        return traces.to_pylist(), responses.to_pylist()
    calls = store.query_arrow(f"SELECT trace_id, response_id FROM llm_calls WHERE _deleted = 0 AND {window}")
    members = store.query_arrow(f"SELECT trace_id, call_trace_id FROM llm_call_spans WHERE _deleted = 0 AND {window}")
    stored_traces = pa.chunked_array([*calls.column("trace_id").chunks, *members.column("trace_id").chunks,
                                      *members.column("call_trace_id").chunks], pa.string())  # fmt: skip
    shared = traces.filter(pc.is_in(traces, value_set=pc.unique(stored_traces)))
    answered = responses.filter(pc.is_in(responses, value_set=pc.unique(calls.column("response_id"))))
    return shared.to_pylist(), answered.to_pylist()


_PROBE = ["trace_id", "response_id", "start_time", "service", "request_model", "source_convention", "span_name"]


def _probe(tables: list[pa.Table], links: pa.Table | None) -> pa.Table:
    """What is looked up in ClickHouse: the trace ids, response ids and start times of the new rows and links."""
    parts = [t.select(_PROBE) for t in tables if t.num_rows]
    if links is not None and links.num_rows:
        schema = pa.schema([LLM_CALLS_SCHEMA.field(n) for n in _PROBE])
        columns = [links.column(n) if n in ("trace_id", "start_time")
                   else pa.nulls(links.num_rows, schema.field(n).type) for n in _PROBE]  # fmt: skip
        parts.append(pa.Table.from_arrays(columns, schema=schema))
    return pa.concat_tables(parts)


def _stored_links(local: duckdb.DuckDBPyConnection, traces: pa.Array, new: pa.Table) -> pa.Table:
    """The local ``span_links`` of ``traces`` within the fold's window of ``new`` (ingest/fold.py reads no more)."""
    lo, hi = pc.min_max(new.column("start_time")).values()
    pad = timedelta(microseconds=SEARCH_WINDOW_US)
    cur = local.cursor()
    try:
        cur.register("_spanprism_traces", pa.table({"t": traces}))
        sql = ("SELECT l.* FROM span_links l JOIN _spanprism_traces p ON l.trace_id = p.t"
               " WHERE l.start_time BETWEEN ? AND ?")  # fmt: skip
        return cur.sql(sql, params=[lo.as_py() - pad, hi.as_py() + pad]).to_arrow_table().cast(SPAN_LINKS_SCHEMA)
    finally:
        cur.close()


def _micros(table: pa.Table, lead_us: int, lag_us: int) -> str | None:
    """``start_time BETWEEN …`` covering ``table``'s start times widened by ``lead_us`` before, ``lag_us`` after."""
    if not table.num_rows:
        return None
    lo, hi = pc.min_max(table.column("start_time")).values()
    return (f"start_time BETWEEN fromUnixTimestamp64Micro({lo.value - lead_us}, 'UTC')"
            f" AND fromUnixTimestamp64Micro({hi.value + lag_us}, 'UTC')")  # fmt: skip


def _weak_partners(store: ClickHouseStore, new: pa.Table) -> pa.Table:
    """Stored calls a weak rule (SDK twin, stream log) may pair with the unit's rows: same (service, request model)
    and within the rule's window of the unit's candidates. Empty when the unit holds no candidate."""
    calls = new.filter(pc.is_valid(new.column("request_model")))  # links carry no call fields
    if not calls.num_rows:
        return LLM_CALLS_SCHEMA.empty_table()
    convention, response = calls.column("source_convention"), calls.column("response_id")
    is_log = pc.fill_null(pc.starts_with(calls.column("span_name"), STREAM_LOG_PREFIX), False)
    is_sdk = pc.fill_null(pc.equal(convention, SDK_CONVENTION), False)
    unanswered = pc.and_(pc.and_(pc.invert(is_sdk), pc.invert(is_log)), pc.is_null(response))
    sdk, log, bare = calls.filter(is_sdk), calls.filter(is_log), calls.filter(unanswered)
    log_sql = f"startsWith(span_name, '{STREAM_LOG_PREFIX}')"
    wanted = []
    # The mirror of each weak rule (ingest/fold.py's _pair_sql), seen from either side of the pair.
    if (when := _micros(sdk, TWIN_LEAD_US, 0)) is not None:  # a new SDK span: the span wrapping it, stored
        wanted.append(f"(source_convention != '{SDK_CONVENTION}' AND response_id IS NULL AND {when})")
    if (when := _micros(bare, 0, TWIN_LEAD_US)) is not None:  # a new wrapping span: the SDK span it wraps
        wanted.append(f"(source_convention = '{SDK_CONVENTION}' AND {when})")
    if (when := _micros(calls.filter(pc.invert(is_log)), 0, STREAM_LEAD_US)) is not None:  # its stream log
        wanted.append(f"({log_sql} AND {when})")
    if (when := _micros(log, STREAM_LEAD_US, 0)) is not None:  # a new stream log: its request span
        wanted.append(f"(NOT {log_sql} AND {when})")
    if not wanted:
        return LLM_CALLS_SCHEMA.empty_table()
    pairs = sorted({(s or "", m) for s, m in zip(calls.column("service").to_pylist(),
                                                 calls.column("request_model").to_pylist(), strict=True)})  # fmt: skip
    same = " OR ".join(f"(ifNull(service, '') = {lits([s])} AND request_model = {lits([m])})" for s, m in pairs)
    sql = f"SELECT {_CALL_COLS} FROM llm_calls FINAL WHERE ({same}) AND ({' OR '.join(wanted)})"
    return store.query_arrow(sql).cast(LLM_CALLS_SCHEMA)


def _stored(store: ClickHouseStore, new: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The stored calls and members that the new rows may fold with (see the module docstring)."""
    lo, hi = pc.min_max(new.column("start_time")).values()
    pad = SEARCH_WINDOW_US
    window = (f"start_time BETWEEN fromUnixTimestamp64Micro({lo.value - pad}, 'UTC')"
              f" AND fromUnixTimestamp64Micro({hi.value + pad}, 'UTC')")  # fmt: skip
    traces, responses = _present(store, new, window)
    weak = _weak_partners(store, new)
    if weak.num_rows:
        traces = sorted(set(traces) | set(weak.column("trace_id").to_pylist()))
    if not traces and not responses:  # nothing stored shares an id with the unit: only the unit folds with itself
        return LLM_CALLS_SCHEMA.empty_table(), _SPANS_SCHEMA.empty_table()
    by_trace = f"trace_id IN ({lits(traces)})" if traces else "0"
    calls_where = by_trace + (f" OR response_id IN ({lits(responses)})" if responses else "")
    calls = store.query_arrow(f"SELECT {_CALL_COLS} FROM llm_calls FINAL WHERE {window} AND ({calls_where})")
    if weak.num_rows:  # a weak partner outside the search window of the unit's own start times
        calls = pa.concat_tables([calls.cast(LLM_CALLS_SCHEMA), weak.cast(LLM_CALLS_SCHEMA)])
        seen: set[tuple[str, str]] = set()
        keep = []
        for key in _keys(calls, "trace_id", "span_id"):
            keep.append(key not in seen)
            seen.add(key)
        calls = calls.filter(pa.array(keep, pa.bool_()))
    members = store.query_arrow(
        f"SELECT {_SPAN_COLS} FROM llm_call_spans FINAL WHERE {window}"
        f" AND ({by_trace} OR {by_trace.replace('trace_id', 'call_trace_id')})"
    )
    return calls.cast(LLM_CALLS_SCHEMA), members.cast(_SPANS_SCHEMA)


def _with_version(rows: pa.Table, version: int, deleted: int) -> pa.Table:
    n = rows.num_rows
    rows = rows.append_column(VERSION, pa.array([version] * n, pa.uint64()))
    return rows.append_column(DELETED, pa.array([deleted] * n, pa.uint8()))


def _keys(table: pa.Table, *names: str) -> list[tuple]:
    return list(zip(*(table.column(n).to_pylist() for n in names), strict=True)) if table.num_rows else []


def _retired(before: pa.Table, after: pa.Table, *names: str) -> pa.Table:
    """Rows of ``before`` whose key is no longer among ``after`` exactly as it was (rewritten or removed)."""
    if not before.num_rows:  # the usual unit: nothing stored shares its ids
        return before
    kept = set(_keys(after, *names))
    mask = [k not in kept for k in _keys(before, *names)]
    return before.filter(pa.array(mask, pa.bool_())) if before.num_rows else before


Counts = tuple[list[int], list[int], list[int]]


def _alone(tables: list[pa.Table], links: pa.Table | None) -> pa.Table | None:
    """The unit's calls as one table when, with nothing stored to fold with, the scratch fold could change nothing:
    no pair inside the unit (ingest/fold.py's test) and no span twice (which the scratch's primary key would drop and
    count as a duplicate). None otherwise. Skipping the scratch DuckDB saves ~0.1-0.2 s of CPU a unit."""
    parts = [t for t in tables if t.num_rows]
    if not parts:
        return None
    calls = pa.concat_tables(parts).cast(LLM_CALLS_SCHEMA)
    if unit_may_pair(calls, links if links is not None else SPAN_LINKS_SCHEMA.empty_table()):
        return None
    keys = pc.binary_join_element_wise(calls.column("trace_id"), calls.column("span_id"), "/")
    return calls if len(pc.unique(keys)) == calls.num_rows else None


def write_calls(store: ClickHouseStore, tables: list[pa.Table], batch_ids: list[str], links: pa.Table | None = None,
                local: duckdb.DuckDBPyConnection | None = None) -> Counts:  # fmt: skip
    """Fold and insert the unit's calls (one table per batch, ``batch_ids``), following the unit's new non-LLM
    ``links`` and those stored in ``local``'s ``span_links`` (not written here: the loader does); per batch:
    (stored, duplicates, merged), as the DuckDB path counts them."""
    sizes = [t.num_rows for t in tables]
    if not sum(sizes) and (links is None or not links.num_rows):
        return [0] * len(tables), [0] * len(tables), [0] * len(tables)
    new = _probe(tables, links)
    old_calls, old_members = _stored(store, new)
    old_links = SPAN_LINKS_SCHEMA.empty_table()
    if local is not None:
        traces = pa.chunked_array([*new.column("trace_id").chunks, *old_calls.column("trace_id").chunks,
                                   *old_members.column("trace_id").chunks], pa.string())  # fmt: skip
        old_links = _stored_links(local, pc.unique(traces), new)
    if not (old_calls.num_rows or old_members.num_rows or old_links.num_rows):
        alone = _alone(tables, links)
        if alone is not None:  # the usual unit: nothing to fold, so the scratch fold would return the rows as they are
            store.insert("llm_calls", _with_version(alone, new_version() + 1, 0))
            return sizes, [0] * len(tables), [0] * len(tables)
    scratch = duckdb.connect()
    try:
        scratch.execute(_duck_ddl("llm_calls", LLM_CALLS_SCHEMA))
        scratch.execute(_duck_ddl("llm_call_spans", _SPANS_SCHEMA))
        scratch.execute(_duck_ddl("span_links", SPAN_LINKS_SCHEMA))
        for name, rows in (("llm_calls", old_calls), ("llm_call_spans", old_members), ("span_links", old_links)):
            if rows.num_rows:
                scratch.register("_spanprism_old", rows)
                scratch.execute(f"INSERT OR IGNORE INTO {name} SELECT * FROM _spanprism_old")
                scratch.unregister("_spanprism_old")
        scratch.execute("BEGIN TRANSACTION")
        folded = fold_calls(scratch, tables, batch_ids, links)
        stored = []
        for table in folded.tables:
            if table.num_rows:
                scratch.register("_spanprism_new", table)
                stored.append(scratch.execute("INSERT OR IGNORE INTO llm_calls SELECT * FROM _spanprism_new")
                              .fetchone()[0])  # fmt: skip
                scratch.unregister("_spanprism_new")
            else:
                stored.append(0)
        scratch.execute("COMMIT")
        ids = ", ".join(f"'{b}'" for b in batch_ids)
        calls_after = scratch.sql("SELECT * FROM llm_calls").to_arrow_table()
        fresh = scratch.sql(f"SELECT * FROM llm_calls WHERE ingest_batch IN ({ids})").to_arrow_table()
        members_after = scratch.sql("SELECT * FROM llm_call_spans").to_arrow_table()
    finally:
        scratch.close()
    call_key = ("trace_id", "span_id", "ingest_batch", "start_time")
    member_key = ("trace_id", "span_id", "call_trace_id", "call_span_id", "start_time")
    retired_calls = _retired(old_calls, calls_after, *call_key)
    retired_members = _retired(old_members, members_after, *member_key)
    old_member_keys = set(_keys(old_members, *member_key))
    new_members = members_after.filter(
        pa.array([k not in old_member_keys for k in _keys(members_after, *member_key)], pa.bool_())
    ) if members_after.num_rows else members_after  # fmt: skip
    version = new_version()
    # Tombstones one version older than the rows written with them: a rewritten call keeping its key still wins.
    store.insert("llm_call_spans", _with_version(retired_members.cast(_SPANS_SCHEMA), version, 1))
    store.insert("llm_calls", _with_version(retired_calls.cast(LLM_CALLS_SCHEMA), version, 1))
    store.insert("llm_call_spans", _with_version(new_members.cast(_SPANS_SCHEMA), version + 1, 0))
    store.insert("llm_calls", _with_version(fresh.cast(LLM_CALLS_SCHEMA), version + 1, 0))
    duplicates = [t.num_rows - s + d for t, s, d in zip(folded.tables, stored, folded.duplicates, strict=True)]
    stored = [s - r for s, r in zip(stored, folded.rewritten, strict=True)]
    return stored, duplicates, list(folded.merged)
