"""Chains through non-LLM spans: an LLM span whose nearest LLM ancestor is reached through framework or HTTP spans.

The real OpenInference + Anthropic SDK capture (tests/fixtures/normalize/anthropic_openinference.json: the SDK span
is a direct child of OpenInference's) is re-parented through non-LLM spans, as an application's own span or an
HTTP client span would sit between them: one hop on two calls, two hops on the third, plus a leaf non-LLM span and
an unrelated server span; the first two calls are made concurrent. The three sides (OpenInference spans, the
non-LLM spans, the SDK spans) are written as their own files and ingested in every order, each file once and then
all again: the stored rows must be those of ingesting everything at once (one per call); without the non-LLM spans
the two concurrent calls stay two rows each.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from support.chains import chain_sides
from support.fold_spans import otlp_line

from spanprism.api.storage.connect import open_db
from spanprism.attribution.store.rollup_sql import RollupConfig
from spanprism.attribution.store.rollups import refresh_rollups
from spanprism.ingest.load import store_batches
from spanprism.ingest.pipeline import ingest_paths, process_chunk
from spanprism.ingest.records import RawChunk


def _write(path: Path, spans: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(otlp_line(s) + b"\n" for s in spans))
    return path


def _state(con: Any) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    rows = con.sql("SELECT * EXCLUDE (ingest_batch) FROM llm_calls ORDER BY trace_id, span_id").to_arrow_table()
    members = con.sql("SELECT trace_id, span_id, call_trace_id, call_span_id FROM llm_call_spans ORDER BY ALL")
    return rows.to_pylist(), members.fetchall()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chains")
    outer, links, sdk = chain_sides()
    return {
        "outer": _write(folder / "outer.jsonl", outer),
        "links": _write(folder / "links.jsonl", links),
        "sdk": _write(folder / "sdk.jsonl", sdk),
        "all": _write(folder / "all.jsonl", [*sdk, *links, *outer]),
    }


@pytest.fixture(scope="module")
def expected(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    con = open_db(tmp_path_factory.mktemp("ref") / "t.duckdb")
    summary = ingest_paths(con, [files["all"]])
    state = _state(con)
    links = con.execute("SELECT count(*) FROM span_links").fetchone()[0]
    con.close()
    return summary, state, links


def test_everything_at_once_is_one_row_per_call(expected: Any) -> None:
    summary, (rows, members), links = expected
    assert summary.calls_stored == len(rows) == 3 and summary.merged == 3
    assert all(r["source_convention"] == "openinference" and r["parent_span_id"] is None for r in rows)
    assert all(r["server_address"] == "127.0.0.1" for r in rows)  # from the SDK span, two or three spans down
    assert len(members) == 6
    assert links == 4 + 3  # the spans between (1 + 1 + 2) and the leaves; server spans are no link
    assert summary.non_llm_skipped == 10


def test_without_the_spans_between_the_concurrent_calls_stay_two_rows(files: dict[str, Path], tmp_path: Path) -> None:
    """Without the links only the weak SDK-twin rule is left: it joins the lone failed call, not the two concurrent
    calls of one model (2 + 2 + 1 rows)."""
    con = open_db(tmp_path / "t.duckdb")
    ingest_paths(con, [files["outer"]])
    ingest_paths(con, [files["sdk"]])
    assert con.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 5
    con.close()


@pytest.mark.parametrize("order", list(itertools.permutations(("outer", "links", "sdk"))), ids="-".join)
def test_every_order_once_or_twice(order: tuple[str, ...], files: dict[str, Path], expected: Any,
                                   tmp_path: Path) -> None:  # fmt: skip
    _, state, _ = expected
    con = open_db(tmp_path / "t.duckdb")

    def ingest(name: str) -> Any:
        summary = ingest_paths(con, [files[name]])
        refresh_rollups(con)  # the scheduler may roll up between any two ingests
        return summary

    summaries = [ingest(name) for name in order]
    assert _state(con) == state, order
    assert sum(s.calls_stored for s in summaries) == 3 and sum(s.merged for s in summaries) == 3
    again = [ingest(name) for name in order]
    assert _state(con) == state
    assert sum(s.calls_stored for s in again) == 0 and sum(s.merged for s in again) == 0
    # Rollups (and detection, which reads them) count the merged rows only, rolled up before a merge or after.
    grain = min(RollupConfig().grains)
    assert con.execute("SELECT sum(n_calls) FROM series_rollups WHERE grain_s = ?", [grain]).fetchone()[0] == 3
    con.close()


def test_one_group_commit_of_several_requests(files: dict[str, Path], expected: Any, tmp_path: Path) -> None:
    """The OTLP receiver's group commit: the links and the SDK spans as two batches of one transaction, after the
    outer spans were stored by an earlier request; then the same unit again."""
    _, state, _ = expected
    con = open_db(tmp_path / "t.duckdb")

    def batch(name: str) -> Any:
        return process_chunk(RawChunk(f"http:{name}", "jsonl", files[name].read_bytes()))

    store_batches(con, [batch("outer")])
    counts = store_batches(con, [batch("links"), batch("sdk")])
    assert _state(con) == state
    assert sum(c.calls_stored for c in counts) == 0 and sum(c.merged for c in counts) == 3
    again = store_batches(con, [batch("links"), batch("sdk")])
    assert _state(con) == state and sum(c.calls_stored for c in again) == 0
    con.close()
