"""One row per LLM call: spans of one call are folded into one ``llm_calls`` row, whatever the arrival order.

Fixtures are real spans captured from the libraries (tests/fixtures/normalize/anthropic_*.json, logfire_anthropic,
pydantic_ai: see tests/instrumented/child_anthropic.py); each case splits them into the two emitters' spans, writes
each side as its own OTLP JSON-lines file, and ingests them in both orders, twice: the stored rows must be the same
as ingesting everything at once, one per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from support.fold_spans import otlp_line

from spanprism.api.storage.connect import open_db
from spanprism.ingest.identity import group_calls
from spanprism.ingest.merge import merge_rows
from spanprism.ingest.pipeline import ingest_paths

FIXTURES = Path(__file__).parent / "fixtures" / "normalize"
SDK_SCOPE = "com.anthropic.sdk.python"


def _spans(name: str) -> list[dict[str, Any]]:
    return orjson.loads((FIXTURES / f"{name}.json").read_bytes())


def _side(span: dict[str, Any]) -> bool:
    """The second emitter of a call: the SDK's own span, or Logfire's stream log."""
    return span["scope"] == SDK_SCOPE or span["name"].startswith("streaming response from")


def _write(path: Path, spans: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(otlp_line(s) + b"\n" for s in spans))
    return path


def _rows(con: Any) -> list[dict[str, Any]]:
    rows = con.sql("SELECT * EXCLUDE (ingest_batch) FROM llm_calls ORDER BY trace_id, span_id").to_arrow_table()
    return rows.to_pylist()


def _members(con: Any) -> list[tuple[Any, ...]]:
    return con.sql("SELECT trace_id, span_id, call_trace_id, call_span_id FROM llm_call_spans ORDER BY ALL").fetchall()


CASES = {  # fixture → (calls, calls made of two spans)
    "anthropic_openinference": (3, 3),
    "anthropic_openllmetry": (3, 3),
    "logfire_anthropic": (3, 1),
    "pydantic_ai": (3, 3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_row_per_call_in_any_order_once_or_twice(name: str, tmp_path: Path) -> None:
    spans = _spans(name)
    first = _write(tmp_path / "a.jsonl", [s for s in spans if not _side(s)])
    second = _write(tmp_path / "b.jsonl", [s for s in spans if _side(s)])
    both = _write(tmp_path / "all.jsonl", spans)
    con = open_db(tmp_path / "ref.duckdb")
    together = ingest_paths(con, [both])
    expected, members = _rows(con), _members(con)
    con.close()
    calls, merged = CASES[name]
    assert len(expected) == together.calls_stored == calls
    assert sum(r["merged_span_ids"] is not None for r in expected) == merged == together.merged
    assert len(members) == 2 * merged
    for order in ((first, second), (second, first)):
        con = open_db(tmp_path / f"{order[0].stem}.duckdb")
        summaries = [ingest_paths(con, [path]) for path in (*order, *order)]
        assert _rows(con) == expected and _members(con) == members, order
        assert sum(s.calls_stored for s in summaries) == calls
        assert sum(s.merged for s in summaries) == merged
        assert [s.duplicates for s in summaries[2:]] == [s.spans_seen - s.non_llm_skipped for s in summaries[2:]]
        con.close()


def _by_call(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows keyed non_stream / stream / error (the children make the calls in that order)."""
    ordered = sorted(rows, key=lambda r: r["start_time"])
    return dict(zip(("non_stream", "stream", "error"), ordered, strict=True))


def _ingest_all(name: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    con = open_db(tmp_path / "t.duckdb")
    ingest_paths(con, [_write(tmp_path / "all.jsonl", _spans(name))])
    rows = _by_call(_rows(con))
    con.close()
    return rows


def test_openinference_and_sdk_take_each_field_from_its_source(tmp_path: Path) -> None:
    """OpenInference's LLM span (no TTFT, no server) with the SDK's child span (TTFT, server, cache writes)."""
    rows = _ingest_all("anthropic_openinference", tmp_path)
    spans = _spans("anthropic_openinference")
    sdk = {s["attributes"].get("gen_ai.response.id"): s for s in spans if s["scope"] == SDK_SCOPE}
    stream = rows["stream"]
    assert stream["source_convention"] == "openinference" and stream["parent_span_id"] is None  # the outer span
    first_token_ns = sdk[stream["response_id"]]["start_ns"] + sdk[stream["response_id"]]["attributes"][
        "gen_ai.response.time_to_first_chunk"] * 1e9  # fmt: skip
    start_ns = min(s["start_ns"] for s in spans if s["trace_id"] == stream["trace_id"])
    assert stream["ttft_ms"] == pytest.approx((first_token_ns - start_ns) / 1e6, abs=0.01)
    assert stream["streaming"] is True and rows["non_stream"]["streaming"] is False
    assert (stream["cache_write_tokens"], stream["cache_read_tokens"], stream["input_tokens"]) == (400, 2048, 2500)
    assert stream["server_address"] == "127.0.0.1" and stream["provider_request_id"].startswith("req_")
    assert rows["non_stream"]["ttft_ms"] is None
    assert rows["error"]["status"] == "error" and rows["error"]["request_model"] == "spanprism-rate-limited"


def test_openllmetry_tokens_come_from_the_usage_object(tmp_path: Path) -> None:
    """OpenLLMetry adds message_start's output count (1) to the final one; the SDK's span copies the usage."""
    spans = _spans("anthropic_openllmetry")
    streamed = [
        s for s in spans if s["attributes"].get("gen_ai.is_streaming") or s["attributes"].get("gen_ai.request.stream")
    ]
    outputs = {s["scope"]: s["attributes"].get("gen_ai.usage.output_tokens") for s in streamed}
    assert outputs[SDK_SCOPE] == 6 and outputs["opentelemetry.instrumentation.anthropic"] == 7
    rows = _ingest_all("anthropic_openllmetry", tmp_path)
    assert rows["stream"]["output_tokens"] == 6 and rows["stream"]["ttft_ms"] is not None
    # The failed call: no shared id, joined as the SDK twin of OpenLLMetry's error span.
    assert rows["error"]["status"] == "error" and rows["error"]["merged_span_ids"] is not None


def test_logfire_stream_log_gives_tokens_and_the_stream_end(tmp_path: Path) -> None:
    spans = _spans("logfire_anthropic")
    log = next(s for s in spans if s["name"].startswith("streaming response from"))
    rows = _ingest_all("logfire_anthropic", tmp_path)
    stream = rows["stream"]
    assert stream["span_name"].startswith("Message with")  # the request span is the call
    assert (stream["output_tokens"], stream["cache_write_tokens"]) == (6, 400)
    assert stream["response_model"] == "claude-sonnet-4-5-20250929" and stream["streaming"] is True
    end_ns = stream["start_time"].timestamp() * 1e9 + stream["duration_ms"] * 1e6
    assert end_ns == pytest.approx(log["end_ns"], abs=2_000)  # the stream's end, not the headers'
    assert rows["error"]["response_model"] is None  # Logfire's copy of the request model is not a response


def _row(span: str, **kw: Any) -> dict[str, Any]:
    base = {"trace_id": "t" * 32, "span_id": span, "parent_span_id": None, "response_id": None, "service": "svc",
            "operation": "chat", "request_model": "m", "source_convention": "openllmetry", "start_time": 1_000_000,
            "duration_ms": 100.0, "span_name": "chat", "output_tokens": None}  # fmt: skip
    return {**base, **kw}


def test_sdk_twins_join_only_when_unambiguous() -> None:
    """Two concurrent failed calls, each an SDK span inside an instrumentation span of another trace: timing
    alone cannot tell which goes with which, so nothing is joined; one failed call alone is joined."""
    sdk = {"source_convention": "anthropic_sdk", "duration_ms": 90.0}
    pair = [_row("a" * 16, trace_id="1" * 32), _row("b" * 16, trace_id="2" * 32, start_time=1_001_000, **sdk)]
    assert group_calls(pair) == [[0, 1]]
    crowd = [*pair, _row("c" * 16, trace_id="3" * 32, start_time=1_000_500),
             _row("d" * 16, trace_id="4" * 32, start_time=1_001_500, **sdk)]  # fmt: skip
    assert sorted(len(g) for g in group_calls(crowd)) == [1, 1, 1, 1]


def test_merge_is_order_free_and_records_the_other_spans() -> None:
    outer = _row("a" * 16, duration_ms=200.0, output_tokens=5, input_tokens=10, cache_read_tokens=None,
                 cache_write_tokens=None, reasoning_tokens=None)  # fmt: skip
    inner = _row("b" * 16, parent_span_id="a" * 16, start_time=1_000_100, ttft_ms=50.0,
                 source_convention="anthropic_sdk", output_tokens=5, input_tokens=10, cache_read_tokens=4,
                 cache_write_tokens=2, reasoning_tokens=None)  # fmt: skip
    for r in (outer, inner):
        r.update({k: r.get(k) for k in ("ttft_ms", "chunk_count", "itl_ms", "itl_p95_ms", "streaming", "status")})
        r.update({k: None for k in ("provider_request_id", "tenant", "provider", "response_model", "session_id",
                                    "system_fingerprint", "server_address", "server_port", "region", "deployment",
                                    "prompt_key", "queue_ms", "error_type", "finish_reason", "ingest_batch",
                                    "decode_ms")})  # fmt: skip
    a, b = merge_rows([outer, inner]), merge_rows([inner, outer])
    assert a == b
    assert (a["span_id"], a["merged_span_ids"]) == ("a" * 16, [f"{'t' * 32}:{'b' * 16}"])
    assert a["ttft_ms"] == pytest.approx(50.1) and a["duration_ms"] == 200.0
    assert (a["cache_write_tokens"], a["uncached_input_tokens"]) == (2, 6)


def test_calls_of_one_span_never_reach_the_python_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain one-span calls, ingested and re-ingested, cost the loader one SQL statement per batch and nothing else."""
    spans = [s for s in _spans("anthropic_openllmetry") if s["scope"] != SDK_SCOPE]
    path = _write(tmp_path / "plain.jsonl", spans)

    def refuse(rows: Any) -> Any:
        raise AssertionError(f"group_calls called with {len(rows)} rows")

    monkeypatch.setattr("spanprism.ingest.fold.group_calls", refuse)
    con = open_db(tmp_path / "t.duckdb")
    first, again = ingest_paths(con, [path]), ingest_paths(con, [path])
    con.close()
    assert (first.calls_stored, again.calls_stored, again.duplicates) == (3, 0, 3)
