"""tests/test_fold.py on the ClickHouse path: the two emitters' spans of each captured call, as two files ingested
in both orders (then again), fold into the rows DuckDB stores when it ingests everything at once.

The cases are the real captures of tests/fixtures/normalize: the SDK span under OpenInference's (same trace),
OpenLLMetry's span and the SDK's in two traces sharing only the response id, Logfire's request span and its
stream log, pydantic-ai's chat span around the SDK's. Each file is its own write unit, so the second file's spans
must find their partners among the rows already in ClickHouse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from support.fold_spans import otlp_line

from spanprism.api.storage.connect import open_db
from spanprism.ingest.pipeline import ingest_paths
from spanprism.models import clickhouse
from spanprism.models.schema import LLM_CALLS_SCHEMA

pytestmark = [pytest.mark.clickhouse]

FIXTURES = Path(__file__).parent / "fixtures" / "normalize"
SDK_SCOPE = "com.anthropic.sdk.python"
CASES = ("anthropic_openinference", "anthropic_openllmetry", "logfire_anthropic", "pydantic_ai")
_COLUMNS = [n for n in LLM_CALLS_SCHEMA.names if n != "ingest_batch"]
_CALLS_SQL = f"SELECT {', '.join(_COLUMNS)} FROM llm_calls{{}} ORDER BY trace_id, span_id"
_MEMBERS_SQL = "SELECT trace_id, span_id, call_trace_id, call_span_id FROM llm_call_spans{} ORDER BY ALL"


def _side(span: dict[str, Any]) -> bool:
    """The second emitter of a call: the SDK's own span, or Logfire's stream log."""
    return span["scope"] == SDK_SCOPE or span["name"].startswith("streaming response from")


def _write(path: Path, spans: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(otlp_line(s) + b"\n" for s in spans))
    return path


def _on_duckdb(db: Path, path: Path) -> tuple[Any, tuple[list[tuple], list[tuple]]]:
    """The reference: ``path`` ingested into a DuckDB file; its summary, then its calls and span members."""
    con = open_db(db)
    try:
        summary = ingest_paths(con, [path])
        return summary, (con.execute(_CALLS_SQL.format("")).fetchall(), con.execute(_MEMBERS_SQL.format("")).fetchall())
    finally:
        con.close()


def _on_clickhouse(url: str, db: Path, paths: list[Path]) -> tuple[list[Any], list[tuple], list[tuple], int]:
    """Each of ``paths`` ingested in turn with the calls in ClickHouse: the summaries, the calls and span members read
    back (FINAL) and the count of raw (unmerged) live rows."""
    store = clickhouse.connect(url)
    con = open_db(db)
    previous = clickhouse.bind(store)
    try:
        summaries = [ingest_paths(con, [path]) for path in paths]
        schema = pa.schema([LLM_CALLS_SCHEMA.field(c) for c in _COLUMNS])
        calls = store.query_arrow(_CALLS_SQL.format(" FINAL WHERE _deleted = 0")).cast(schema).to_pylist()
        members = store.rows(_MEMBERS_SQL.format(" FINAL WHERE _deleted = 0"))
        raw = store.rows("SELECT count() FROM llm_calls WHERE _deleted = 0")[0][0]
    finally:
        clickhouse.bind(previous)
        con.close()
        store.close()
    return summaries, [tuple(r.values()) for r in calls], members, raw


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("second_first", [False, True], ids=["emitter-first", "second-emitter-first"])
def test_one_row_per_call_across_write_units(name: str, second_first: bool, clickhouse_url: str,
                                             tmp_path: Path) -> None:  # fmt: skip
    spans = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    first = _write(tmp_path / "a.jsonl", [s for s in spans if not _side(s)])
    second = _write(tmp_path / "b.jsonl", [s for s in spans if _side(s)])
    together, expected = _on_duckdb(tmp_path / "ref.duckdb", _write(tmp_path / "all.jsonl", spans))

    order = (second, first) if second_first else (first, second)
    summaries, calls, members, _ = _on_clickhouse(clickhouse_url, tmp_path / "ch.duckdb", [*order, *order])
    assert sum(s.calls_stored for s in summaries) == together.calls_stored
    assert sum(s.merged for s in summaries) == together.merged
    assert calls == expected[0]
    assert members == expected[1]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("doubled", [False, True], ids=["once", "every-span-twice"])
def test_one_row_per_call_within_one_write_unit(name: str, doubled: bool, clickhouse_url: str, tmp_path: Path) -> None:
    """Both emitters' spans in ONE write unit, nothing stored yet: the ClickHouse writer must still fold them (it skips
    its scratch fold only for a unit that cannot fold with itself), and a span twice in the unit is one duplicate."""
    spans = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    path = _write(tmp_path / "all.jsonl", spans + spans if doubled else spans)
    together, expected = _on_duckdb(tmp_path / "ref.duckdb", path)

    (summary,), calls, members, _ = _on_clickhouse(clickhouse_url, tmp_path / "ch.duckdb", [path])
    assert together.merged > 0  # the case folds: a writer that skipped the fold would store one row per span
    assert (summary.calls_stored, summary.duplicates, summary.merged) == (
        together.calls_stored, together.duplicates, together.merged)  # fmt: skip
    assert calls == expected[0]
    assert members == expected[1]


def test_a_span_twice_in_one_unit_is_one_duplicate(clickhouse_url: str, tmp_path: Path) -> None:
    """A root LLM span without a response id, twice in one write unit: nothing to fold, yet the second copy is a
    duplicate on ClickHouse as on DuckDB (the writer's no-fold shortcut must not insert it twice)."""
    spans = orjson.loads((FIXTURES / "anthropic_openllmetry.json").read_bytes())
    span = next(s for s in spans if s["parent_span_id"] is None and s["scope"] != SDK_SCOPE)
    span["attributes"] = {k: v for k, v in span["attributes"].items() if "response.id" not in k}
    path = _write(tmp_path / "twice.jsonl", [span, span])
    together, _ = _on_duckdb(tmp_path / "ref.duckdb", path)
    (summary,), _, _, raw = _on_clickhouse(clickhouse_url, tmp_path / "ch.duckdb", [path])
    assert (together.calls_stored, together.duplicates) == (1, 1)
    assert (summary.calls_stored, summary.duplicates, summary.merged) == (1, 1, 0)
    assert raw == 1  # one row inserted, not two versions of it
