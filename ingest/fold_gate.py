"""The fold's gate: whether a write unit can fold at all, before the pair statement of :mod:`spanprism.ingest.fold`.

The pair statement costs ~30-40 ms to plan alone, and most units fold nothing, which two cheap tests show first: the
new side in Arrow (:func:`unit_may_pair`), and the stored side in one lookup (:func:`stored_may_pair`). Both are
supersets of the pair rules: a "maybe" only sends the unit to the exact statement, so a false positive costs time,
never a different result; a "no" must be exact.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.ingest.identity import SDK_CONVENTION, STREAM_LOG_PREFIX

#: Rows the rules that pair spans sharing no id need on one side: a stream log or an SDK span.
SPECIAL = f"(span_name LIKE '{STREAM_LOG_PREFIX}%' OR source_convention = '{SDK_CONVENTION}')"


def between(lo: str, hi: str, column: str = "start_time") -> str:
    """The fold window's condition on ``column``."""
    return f"{column} BETWEEN '{lo}'::TIMESTAMPTZ AND '{hi}'::TIMESTAMPTZ"


def unit_may_pair(new: pa.Table, links: pa.Table) -> bool:
    """Whether two new rows (or a new row and a new link) can be a pair of the fold's pair statement, from the new
    side alone: a parent (or a link) among the unit's own spans, a response id twice, or a stream log or an SDK span
    (the rules that pair spans sharing no id). The ClickHouse writer skips its scratch fold with it too."""
    names, conventions = new.column("span_name"), new.column("source_convention")
    if (
        pc.any(pc.starts_with(names, STREAM_LOG_PREFIX)).as_py()
        or pc.any(pc.equal(conventions, SDK_CONVENTION)).as_py()
    ):
        return True
    responses = new.column("response_id").drop_null()
    if len(pc.unique(responses)) < len(responses):
        return True
    spans = [pc.binary_join_element_wise(t.column("trace_id"), t.column("span_id"), "/") for t in (new, links)]
    parents = pc.binary_join_element_wise(new.column("trace_id"), new.column("parent_span_id"), "/")  # null: a root
    known = pa.chunked_array([c for column in spans for c in column.chunks], pa.string())
    return bool(pc.any(pc.is_in(parents, value_set=known.combine_chunks())).as_py())


def _keys(column: pa.ChunkedArray) -> pa.Table:
    return pa.table({"k": pc.unique(column.drop_null())})


def stored_may_pair(cur: duckdb.DuckDBPyConnection, new: pa.Table, links: pa.Table, lo: str, hi: str) -> bool:
    """Whether a stored call, member or link in the window can be one side of a pair with the unit: it shares a trace
    with a new row or link, or a response id with a new row, or is a stream log or SDK span of a new row's model (a
    new stream log or SDK span has already sent the unit to the pair statement).

    One semi join per key kind over the window's rows of the three tables, the unit's keys read as Arrow by DuckDB's
    replacement scan of this frame's locals: measured 7-8 ms of CPU a 1,000-span unit against 12-13 ms for the
    ``OR``-ed ``IN (unnest($list))`` conditions it replaces (their mark joins and the list parameters' conversion).
    """
    traces = pa.chunked_array([*new.column("trace_id").chunks, *links.column("trace_id").chunks], pa.string())
    _spanprism_t, _spanprism_r = _keys(traces), _keys(new.column("response_id"))  # read by name below
    _spanprism_m = _keys(new.column("request_model"))
    w = between(lo, hi)
    found = cur.execute(f"""SELECT EXISTS (
        SELECT 1 FROM (SELECT trace_id AS a FROM llm_calls WHERE {w} UNION ALL SELECT trace_id FROM llm_call_spans
            WHERE {w} UNION ALL SELECT trace_id FROM span_links WHERE {w}) s SEMI JOIN _spanprism_t t ON s.a = t.k
        UNION ALL SELECT 1 FROM (SELECT response_id AS a FROM llm_calls WHERE {w} AND response_id IS NOT NULL
            UNION ALL SELECT response_id FROM llm_call_spans WHERE {w} AND response_id IS NOT NULL) s
            SEMI JOIN _spanprism_r r ON s.a = r.k
        UNION ALL SELECT 1 FROM (SELECT request_model AS a FROM llm_calls WHERE {w} AND {SPECIAL}
            UNION ALL SELECT request_model FROM llm_call_spans WHERE {w} AND {SPECIAL}) s
            SEMI JOIN _spanprism_m m ON s.a = m.k)""").fetchall()  # fmt: skip
    return bool(found[0][0])
