"""Loader step: fold the spans that describe one call into one ``llm_calls`` row, inside the write transaction.

New rows and the stored rows they may belong with are looked at together: the stored side is read only within
:data:`~spanprism.ingest.identity.SEARCH_WINDOW_US` of the new rows' start times (DuckDB skips row groups outside
it by their min/max), never the whole table. One SQL statement finds the coarse candidate pairs (shared parent,
response id, trace of a stream log, SDK twin); the few rows involved are then grouped and merged in Python
(:mod:`spanprism.ingest.identity`, :mod:`spanprism.ingest.merge`). A batch without candidates costs that one
statement and nothing else.

Chains through non-LLM spans (an instrumentation's LLM span → a framework or HTTP span → the SDK's span) are found
through ``span_links``, the parent links of the non-LLM spans that may lie between two LLM spans (normalize keeps
them; the loader stores them with the batch). The candidate statement walks them up from each LLM span in the window
(a recursive CTE, empty when no link is in the window); a batch of links alone can join two stored calls. The rows
regrouped in Python get their nearest LLM ancestor (``identity.VIA``) from the links of their traces.

The state of a multi-span call is the set of its member rows in ``llm_call_spans``; its ``llm_calls`` row is
recomputed from that set whenever a new member arrives, so the result does not depend on arrival order, and a
span stored before (as a call or as a member) is a duplicate, which makes re-ingesting a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.ingest.fold_gate import SPECIAL, between, stored_may_pair, unit_may_pair
from spanprism.ingest.identity import (
    MAX_LINK_DEPTH,
    SDK_CONVENTION,
    SEARCH_WINDOW_US,
    STREAM_LEAD_US,
    STREAM_LOG_PREFIX,
    TWIN_LEAD_US,
    VIA,
    group_calls,
    nearest_llm_ancestor,
)
from spanprism.ingest.merge import merge_rows
from spanprism.models.schema import CALL_SPAN_COLUMNS, LLM_CALLS_SCHEMA, SPAN_LINKS_SCHEMA

Row = dict[str, Any]
_NEW, _POOL, _LINKS = "_spanprism_fold_new", "_spanprism_fold_pool", "_spanprism_fold_links"
_COLS = ("trace_id, span_id, parent_span_id, response_id, service, operation, request_model, source_convention,"
         " start_time, duration_ms, span_name")  # fmt: skip
_TS_INDEX = LLM_CALLS_SCHEMA.get_field_index("start_time")
_SPANS_SCHEMA = pa.schema(
    [f for f in LLM_CALLS_SCHEMA if f.name != "merged_span_ids"]
    + [pa.field("call_trace_id", pa.string()), pa.field("call_span_id", pa.string())]
)
assert tuple(_SPANS_SCHEMA.names) == CALL_SPAN_COLUMNS


@dataclass(slots=True)
class Folded:
    """Per batch of the unit: the rows to insert and what folding did to the counts."""

    tables: list[pa.Table]
    merged: list[int] = field(default_factory=list)  # spans folded into another span's call (net, this unit)
    duplicates: list[int] = field(default_factory=list)  # spans already stored (as a call or a member)
    rewritten: list[int] = field(default_factory=list)  # stored calls replaced by an inserted row


def _stored_filters(lo: str, hi: str) -> tuple[str, str, str]:
    """The window condition, the condition on a stored call or member row, and the ``traces`` CTE both read.

    Only stored rows that can be one side of a pair enter the pool (a superset, so the pairs are the same as over
    the whole window): every condition of :func:`_pair_sql` either keeps to one trace (parent, member, chain: a new
    row's or a new link's trace), or matches a new row's response id, or needs a stream log or an SDK span and the
    same model on both sides. The window at full ingest rate holds millions of rows; these are the few that matter.
    """
    window = between(lo, hi)
    relevant = (
        f"{window} AND (trace_id IN (SELECT trace_id FROM traces)"
        f" OR response_id IN (SELECT response_id FROM {_NEW} WHERE response_id IS NOT NULL)"
        f" OR ({SPECIAL} AND request_model IN (SELECT request_model FROM {_NEW}))"
        f" OR request_model IN (SELECT request_model FROM {_NEW} WHERE {SPECIAL}))"
    )
    traces = f"traces AS MATERIALIZED (SELECT trace_id FROM {_NEW} UNION SELECT trace_id FROM {_LINKS})"
    return window, relevant, traces


def _pair_sql(lo: str, hi: str) -> str:
    """Candidate pairs among the pool (new rows and the stored window); at least one side new."""
    twin = (f"a.source_convention = '{SDK_CONVENTION}' AND b.source_convention <> '{SDK_CONVENTION}'"
            " AND b.response_id IS NULL AND a.request_model = b.request_model"
            " AND a.service IS NOT DISTINCT FROM b.service")  # fmt: skip
    lead = f"INTERVAL {TWIN_LEAD_US} MICROSECOND"
    stream = (f"a.span_name LIKE '{STREAM_LOG_PREFIX}%' AND a.k <> b.k AND a.request_model = b.request_model"
              " AND a.service IS NOT DISTINCT FROM b.service")  # fmt: skip
    stream_lead = f"INTERVAL {STREAM_LEAD_US} MICROSECOND"
    conditions = [
        "a.trace_id = b.trace_id AND a.parent_span_id = b.span_id",
        "a.response_id = b.response_id AND a.k <> b.k",
        # A new span already stored as a member of a call (a stored call row is left to the primary-key check).
        "a.trace_id = b.trace_id AND a.span_id = b.span_id AND a.src = 'new' AND b.src = 'member'",
        f"{stream} AND a.mnt = b.mnt AND b.start_time BETWEEN a.start_time - {stream_lead} AND a.start_time",
        f"{stream} AND a.mnt = b.mnt + 1 AND b.start_time BETWEEN a.start_time - {stream_lead} AND a.start_time",
        f"{twin} AND a.sec = b.sec AND b.start_time BETWEEN a.start_time - {lead} AND a.start_time",
        f"{twin} AND a.sec = b.sec + 1 AND b.start_time BETWEEN a.start_time - {lead} AND a.start_time",
    ]
    # A span paired with its own stored copy (re-ingest) is no candidate: the primary-key check handles it.
    other = "NOT (a.trace_id = b.trace_id AND a.span_id = b.span_id)"
    pairs = "\nUNION ALL ".join(
        f"SELECT a.k AS x, b.k AS y FROM keyed a JOIN keyed b ON {c}"
        f" WHERE (a.src = 'new' OR b.src = 'new') AND ({other} OR b.src = 'member')"
        for c in conditions
    )
    # Chains: an LLM span, up through non-LLM spans' links, to the LLM span where the walk ends; a pair when one
    # side is new or a link on the way is (a batch of links alone can join two stored calls).
    pairs += (
        "\nUNION ALL SELECT u.k AS x, b.k AS y FROM up u JOIN keyed b ON b.trace_id = u.trace_id AND b.span_id = u.anc"
        " JOIN keyed a ON a.k = u.k WHERE (a.src = 'new' OR b.src = 'new' OR u.fresh) AND a.k <> b.k"
    )
    window, relevant, traces = _stored_filters(lo, hi)
    return f"""
        WITH RECURSIVE {traces}, keyed AS MATERIALIZED (
            SELECT *, epoch(start_time)::BIGINT AS sec, epoch(start_time)::BIGINT // 60 AS mnt FROM (
                SELECT {_COLS}, 'new' AS src, _i AS k FROM {_NEW}
                UNION ALL SELECT {_COLS}, 'call', -1 - row_number() OVER () FROM llm_calls WHERE {relevant}
                UNION ALL SELECT {_COLS}, 'member', -1 - row_number() OVER () - {1 << 40} FROM llm_call_spans
                    WHERE {relevant})
        ), lk AS MATERIALIZED (
            SELECT trace_id, span_id, parent_span_id, false AS fresh FROM span_links
                WHERE {window} AND trace_id IN (SELECT trace_id FROM traces)
            UNION ALL SELECT trace_id, span_id, parent_span_id, true FROM {_LINKS}
        ), up(k, trace_id, anc, fresh, depth) AS (
            SELECT a.k, a.trace_id, l.parent_span_id, l.fresh, 1 FROM keyed a
                JOIN lk l ON l.trace_id = a.trace_id AND l.span_id = a.parent_span_id
            UNION ALL SELECT u.k, u.trace_id, l.parent_span_id, u.fresh OR l.fresh, u.depth + 1 FROM up u
                JOIN lk l ON l.trace_id = u.trace_id AND l.span_id = u.anc WHERE u.depth < {MAX_LINK_DEPTH}
        ), pairs AS MATERIALIZED ({pairs})
        SELECT k, src, trace_id, span_id FROM keyed WHERE k IN (SELECT x FROM pairs UNION SELECT y FROM pairs)
    """


def _window(new: pa.Table, links: pa.Table) -> tuple[str, str]:
    ranges = [list(pc.min_max(t.column("start_time")).values()) for t in (new, links) if t.num_rows]
    lo, hi = min(r[0].as_py() for r in ranges), max(r[1].as_py() for r in ranges)
    pad = timedelta(microseconds=SEARCH_WINDOW_US)
    return (lo - pad).isoformat(), (hi + pad).isoformat()


def _link_map(cur: duckdb.DuckDBPyConnection, traces: set[str], new_links: pa.Table, lo: str,
              hi: str) -> dict[tuple[str, str], str]:  # fmt: skip
    """(trace, span) → parent of the stored and new non-LLM spans of ``traces`` within the window."""
    if not traces:
        return {}
    cur.register(_POOL, pa.table({"t": sorted(traces)}))
    stored = cur.execute(
        f"SELECT l.trace_id, l.span_id, l.parent_span_id FROM span_links l JOIN {_POOL} p ON l.trace_id = p.t"
        f" WHERE {between(lo, hi, 'l.start_time')}").fetchall()  # fmt: skip
    cur.unregister(_POOL)
    out = {(t, s): p for t, s, p in stored}
    if new_links.num_rows:
        mine = new_links.filter(pc.is_in(new_links.column("trace_id"), pa.array(sorted(traces), pa.string())))
        columns = (mine.column(c).to_pylist() for c in ("trace_id", "span_id", "parent_span_id"))
        out.update(((t, s), p) for t, s, p in zip(*columns, strict=True))
    return out


def _as_rows(table: pa.Table) -> list[Row]:
    """Rows as dicts with ``start_time`` in µs since the epoch (what identity/merge compute with)."""
    ts = table.column("start_time").cast(pa.int64())
    return table.set_column(table.schema.get_field_index("start_time"), "start_time", ts).to_pylist()


def _to_table(rows: list[Row], schema: pa.Schema) -> pa.Table:
    """Rows (``start_time`` in µs, extra keys ignored) as a table of ``schema``: Arrow's own row conversion (2.4x
    faster than a list per column)."""
    index = schema.get_field_index("start_time")
    table = pa.Table.from_pylist(rows, schema=schema.set(index, pa.field("start_time", pa.int64())))
    return table.set_column(index, schema.field(index), table.column(index).cast(schema.field(index).type))


def _stored(cur: duckdb.DuckDBPyConnection, table: str, keys: list[tuple[str, str]], lo: str, hi: str) -> list[Row]:
    if not keys:
        return []
    cur.register(_POOL, pa.table({"t": [k[0] for k in keys], "s": [k[1] for k in keys]}))
    rows = _as_rows(cur.sql(
        f"SELECT c.* FROM {table} c JOIN {_POOL} k ON c.trace_id = k.t AND c.span_id = k.s"
        f" WHERE {between(lo, hi, 'c.start_time')}").to_arrow_table())  # fmt: skip
    cur.unregister(_POOL)
    return rows


def _delete(cur: duckdb.DuckDBPyConnection, calls: set[tuple[str, str]], lo: str, hi: str) -> None:
    """Remove stored calls (their ``llm_calls`` rows and their members) that are about to be written anew. They were
    read within the window, so the deletes look only there (row groups outside are skipped, not scanned)."""
    if not calls:
        return
    keys = sorted(calls)
    window = between(lo, hi)
    cur.register(_POOL, pa.table({"t": [k[0] for k in keys], "s": [k[1] for k in keys]}))
    cur.execute(f"DELETE FROM llm_calls USING {_POOL} k WHERE trace_id = k.t AND span_id = k.s AND {window}")
    cur.execute(f"DELETE FROM llm_call_spans USING {_POOL} k"
                f" WHERE call_trace_id = k.t AND call_span_id = k.s AND {window}")  # fmt: skip
    cur.unregister(_POOL)


def _members_of(cur: duckdb.DuckDBPyConnection, calls: set[tuple[str, str]], lo: str, hi: str) -> list[Row]:
    if not calls:
        return []
    keys = sorted(calls)
    cur.register(_POOL, pa.table({"t": [k[0] for k in keys], "s": [k[1] for k in keys]}))
    rows = _as_rows(cur.sql(
        f"SELECT m.* FROM llm_call_spans m JOIN {_POOL} k ON m.call_trace_id = k.t AND m.call_span_id = k.s"
        f" WHERE {between(lo, hi, 'm.start_time')}").to_arrow_table())  # fmt: skip
    cur.unregister(_POOL)
    return rows


@dataclass(slots=True)
class _Pool:
    """The rows regrouped together: each with where it came from (a stored call, a member, a new row)."""

    rows: list[Row] = field(default_factory=list)
    call_of: list[tuple[str, str] | None] = field(default_factory=list)  # stored: the call it belongs to
    new_index: list[int | None] = field(default_factory=list)  # new: its index in the concatenated unit
    members: dict[tuple[str, str], set[tuple[str, str]]] = field(default_factory=dict)  # stored call -> keys

    def add(self, row: Row, call: tuple[str, str] | None, index: int | None) -> None:
        self.rows.append(row)
        self.call_of.append(call)
        self.new_index.append(index)
        if call is not None:
            self.members.setdefault(call, set()).add((row["trace_id"], row["span_id"]))


def _load_pool(cur: duckdb.DuckDBPyConnection, new_rows: dict[int, Row], involved: list[tuple[Any, ...]],
               lo: str, hi: str) -> tuple[_Pool, set[int]]:  # fmt: skip
    """Stored singletons, every member of every touched stored call, then the new rows not stored already."""
    calls = _stored(cur, "llm_calls", [(t, s) for _, src, t, s in involved if src == "call"], lo, hi)
    found = _stored(cur, "llm_call_spans", [(t, s) for _, src, t, s in involved if src == "member"], lo, hi)
    touched = {(r["call_trace_id"], r["call_span_id"]) for r in found}
    touched |= {(r["trace_id"], r["span_id"]) for r in calls if r["merged_span_ids"] is not None}
    pool = _Pool()
    for row in calls:
        if row["merged_span_ids"] is None:
            pool.add(row, (row["trace_id"], row["span_id"]), None)
    for row in _members_of(cur, touched, lo, hi):
        pool.add(row, (row.pop("call_trace_id"), row.pop("call_span_id")), None)
    seen = {(r["trace_id"], r["span_id"]) for r in pool.rows}
    duplicates = set()
    for index, row in sorted(new_rows.items()):
        k = (row["trace_id"], row["span_id"])
        if k in seen:
            duplicates.add(index)
        else:
            seen.add(k)
            pool.add(row, None, index)
    return pool, duplicates


def _unchanged(pool: _Pool, group: list[int]) -> bool:
    """A group that is exactly one stored call, with nothing new: leave it alone."""
    calls = {pool.call_of[i] for i in group}
    if None in calls or len(calls) != 1:
        return False
    (call,) = calls
    return pool.members[call] == {(pool.rows[i]["trace_id"], pool.rows[i]["span_id"]) for i in group}


def _output(pool: _Pool, group: list[int], members: _Members) -> Row:
    """The call row of a group; when it has several spans, their member rows keyed to it go to ``members``."""
    rows = [pool.rows[i] for i in group]
    if len(rows) == 1:
        return {**rows[0], "merged_span_ids": None}
    call = merge_rows(rows)
    call["merged_span_ids"] = orjson.dumps(call["merged_span_ids"]).decode()
    for i, r in zip(group, rows, strict=True):
        members.add(pool.new_index[i], r, (call["trace_id"], call["span_id"]))
    return call


@dataclass(slots=True)
class _Members:
    """Member rows to write: new spans by their index in the unit's table (taken from it as Arrow), stored ones as
    rows (read back from the tables)."""

    new: list[tuple[int, str, str]] = field(default_factory=list)
    stored: list[Row] = field(default_factory=list)

    def add(self, index: int | None, row: Row, call: tuple[str, str]) -> None:
        if index is None:
            self.stored.append({**row, "call_trace_id": call[0], "call_span_id": call[1]})
        else:
            self.new.append((index, *call))

    def table(self, new: pa.Table) -> pa.Table | None:
        parts = []
        if self.new:
            index, trace, span = zip(*self.new, strict=True)
            taken = new.take(pa.array(index, pa.int64())).drop_columns(["merged_span_ids"])
            columns = [*taken.columns, pa.array(trace, pa.string()), pa.array(span, pa.string())]
            parts.append(pa.Table.from_arrays(columns, schema=_SPANS_SCHEMA))
        if self.stored:
            parts.append(_to_table(self.stored, _SPANS_SCHEMA))
        return pa.concat_tables(parts) if parts else None


def _batch_of(sizes: list[int], index: int) -> int:
    for b, size in enumerate(sizes):
        if index < size:
            return b
        index -= size
    raise IndexError(index)


def fold_calls(cur: duckdb.DuckDBPyConnection, tables: list[pa.Table], batch_ids: list[str],
               links: pa.Table | None = None) -> Folded:  # fmt: skip
    """Fold the new rows of ``tables`` (one per batch of a write unit, ids ``batch_ids``) with each other and with
    stored rows, following the stored and new non-LLM ``links`` (``SPAN_LINKS_SCHEMA``) between LLM spans; a
    rewritten call row carries the id of the batch that wrote it (the first batch when only links were new).

    Runs inside the caller's transaction: deletes the stored calls that are written anew, writes the member rows,
    and returns the tables to insert with per-batch counts. ``links`` are not written here (the loader does).
    """
    sizes = [t.num_rows for t in tables]
    folded = Folded(list(tables), [0] * len(tables), [0] * len(tables), [0] * len(tables))
    links = links if links is not None else SPAN_LINKS_SCHEMA.empty_table()
    if not sum(sizes) and not links.num_rows:
        return folded
    new = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    lo, hi = _window(new, links)
    # The pair statement costs ~30-40 ms to plan alone (a unit of 1,000 spans costs about as much to insert): most
    # units fold nothing, which two cheap tests show first (ingest/fold_gate.py). The unit is registered only for the
    # statement (a register/unregister pair costs ~0.9 ms).
    if not (unit_may_pair(new, links) or stored_may_pair(cur, new, links, lo, hi)):
        return folded
    cur.register(_NEW, new.append_column("_i", pa.array(range(new.num_rows), pa.int64())))
    cur.register(_LINKS, links)
    involved = cur.execute(_pair_sql(lo, hi)).fetchall()
    cur.unregister(_NEW)
    cur.unregister(_LINKS)
    if not involved:
        return folded
    picked = sorted(k for k, src, _, _ in involved if src == "new")
    new_rows = dict(zip(picked, _as_rows(new.take(picked)), strict=True)) if picked else {}
    pool, duplicates = _load_pool(cur, new_rows, involved, lo, hi)
    chain = _link_map(cur, {r["trace_id"] for r in pool.rows if r["parent_span_id"] is not None}, links, lo, hi)
    for row in pool.rows:
        row[VIA] = nearest_llm_ancestor(row["trace_id"], row["parent_span_id"], chain) if chain else None
    outputs: list[list[Row]] = [[] for _ in tables]
    members = _Members()
    rewrite: set[tuple[str, str]] = set()
    for group in group_calls(pool.rows):
        if _unchanged(pool, group):
            continue
        stored = {pool.call_of[i] for i in group} - {None}
        fresh = [pool.new_index[i] for i in group if pool.new_index[i] is not None]
        rewrite |= stored  # type: ignore[arg-type]
        call = _output(pool, group, members)
        target = _batch_of(sizes, min(fresh)) if fresh else 0
        outputs[target].append({**call, "ingest_batch": batch_ids[target]})
        # One row replaces the group's stored calls: the unit's net new calls are 1 − len(stored), and the spans
        # folded into another's call grow by len(fresh) + len(stored) − 1 (a stored call's own members stay counted).
        folded.rewritten[target] += len(stored)
        if stored or len(fresh) > 1:
            folded.merged[target] += len(fresh) + len(stored) - 1
    for index in duplicates:
        folded.duplicates[_batch_of(sizes, index)] += 1
    _delete(cur, rewrite, lo, hi)
    member_rows = members.table(new)
    if member_rows is not None:
        cur.register(_POOL, member_rows)
        cur.execute(f"INSERT INTO llm_call_spans SELECT * FROM {_POOL}")
        cur.unregister(_POOL)
    offsets = [sum(sizes[:b]) for b in range(len(sizes))]
    for b, table in enumerate(tables):
        drop = {i - offsets[b] for i in picked if offsets[b] <= i < offsets[b] + sizes[b]}
        kept = table.filter(pa.array([i not in drop for i in range(sizes[b])])) if drop else table
        extra = _to_table(outputs[b], LLM_CALLS_SCHEMA) if outputs[b] else None
        folded.tables[b] = pa.concat_tables([kept, extra]) if extra is not None else kept
    return folded
