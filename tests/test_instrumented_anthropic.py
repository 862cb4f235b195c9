"""Real Anthropic-side emitters around the real ``anthropic`` 2.x client, against a fake Messages API server.

Each library runs in its own process (tests/instrumented/child_anthropic.py) against the fake server (known tokens,
cache reads and writes, timing), exports OTLP/HTTP to a capture receiver, and the capture goes through the real
ingest. The SDK emits its own span for every call next to any instrumentation, and Logfire splits a stream into a
request span and a log span: whatever the emitter, the check is ONE row per call, with the server's tokens, the
caller's timing, and the fields each source knows (CONVENTIONS.md, "Emitters of today"). The double-span captures are
also ingested split by emitter, in both orders and twice, and must give the same rows.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from instrumented.child import CHILD_HEADER
from instrumented.fake_anthropic import (
    FAIL_MODEL,
    FIRST_TOKEN_DELAY_S,
    NON_STREAM_REPLY,
    REQUEST_MODEL,
    RESPONSE_MODEL,
    STREAM_REPLY,
    FakeAnthropicServer,
    Reply,
)
from instrumented.harness import ChildRun, LibSpec, run_children
from instrumented.truth import check_timing, checked_rows, within_call
from support.fold_spans import otlp_line

from spanprism.api.storage.connect import open_db
from spanprism.ingest.decode import decode_chunk, iter_chunks, open_input
from spanprism.ingest.pipeline import IngestSummary, ingest_paths

pytestmark = pytest.mark.slow

CHILD = Path(__file__).parent / "instrumented" / "child_anthropic.py"
CALLS = ("non_stream", "stream", "error")
CLOCK_SLACK_MS = 1.0
#: The SDK times its first chunk from a clock reading taken before its span starts (span creation under load
#: shifts it by ~1-2 ms), so a TTFT re-based on the span may exceed the caller's own by a little.
TTFT_TOL_MS = 5.0


@dataclass(frozen=True, slots=True)
class Expected:
    """What a library's stored rows must show (CONVENTIONS.md, "Emitters of today")."""

    module: str
    merged: tuple[bool, bool, bool]  # per call: folded from two spans
    ttft: bool  # TTFT on the streamed call (some member measured a first token)
    server: bool  # server address known (the SDK's span has it)
    convention: str
    # Per call: the row's duration (and TTFT) within 5 ms of the caller's (instrumented/truth.py). Not where the
    # library does its own work outside its span: pydantic-ai's agent loop (~100 ms) around its chat span.
    timed: tuple[bool, bool, bool] = (True, True, True)


LIBS: dict[str, Expected] = {
    "anthropic_sdk": Expected("anthropic", (False, False, False), True, True, "anthropic_sdk"),
    "openinference_anthropic": Expected(
        "openinference.instrumentation.anthropic", (True, True, True), True, True, "openinference"
    ),
    "openllmetry_anthropic": Expected(
        "opentelemetry.instrumentation.anthropic", (True, True, True), True, True, "openllmetry"
    ),
    # Logfire suppresses the SDK's own span; its stream is a request span plus a "streaming response" log span.
    # Its first instrumented call's own work (~40 ms) is paid by the child's unexported warm-up calls.
    # Its error call's row is ~4.9 ms shorter than the caller's clock on every run (measured by the i13 captures):
    # work on Logfire's exception path outside its span, so the 5 ms bar would measure Logfire, not the row; the
    # bracket checks (the row covers the server's handling and lies inside the call) still hold for it.
    "logfire_anthropic": Expected("logfire", (False, True, False), False, False, "logfire", (True, True, False)),
    "pydantic_ai": Expected("pydantic_ai", (True, True, True), True, True, "pydantic_ai", (False, False, False)),
}


@dataclass(slots=True)
class Ingested:
    run: ChildRun
    summary: IngestSummary
    rows: dict[str, dict[str, Any]]


def _rows(con: Any) -> list[dict[str, Any]]:
    return con.sql("SELECT * EXCLUDE (ingest_batch) FROM llm_calls ORDER BY start_time").to_arrow_table().to_pylist()


@pytest.fixture(scope="module")
def anthropic_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeAnthropicServer, dict[str, ChildRun]]:
    specs = [LibSpec(lib, exp.module, script=CHILD) for lib, exp in LIBS.items()
             if importlib.util.find_spec(exp.module) is not None and importlib.util.find_spec("anthropic")]  # fmt: skip
    server = FakeAnthropicServer().start()
    try:
        runs = run_children(specs, server, tmp_path_factory.mktemp("anthropic"), model=REQUEST_MODEL) if specs else {}
    finally:
        server.stop()
    return server, runs


@pytest.fixture(scope="module")
def anthropic_ingested(anthropic_runs: tuple[FakeAnthropicServer, dict[str, ChildRun]],
                       tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ingested]:  # fmt: skip
    out = {}
    for lib, run in anthropic_runs[1].items():
        con = open_db(tmp_path_factory.mktemp(f"db-{lib}") / "t.duckdb")
        summary = ingest_paths(con, [run.capture])
        rows = checked_rows(_rows(con), run.observed)
        con.close()
        assert len(rows) == len(CALLS), f"{lib}: {len(rows)} rows for 3 calls, summary {summary.as_dict()}"
        out[lib] = Ingested(run, summary, dict(zip(CALLS, rows, strict=True)))
    return out


def _got(lib: str, ingested: dict[str, Ingested]) -> Ingested:
    if lib not in ingested:
        pytest.skip(f"{LIBS[lib].module} (or anthropic) is not importable")
    return ingested[lib]


def _start_ns(row: dict[str, Any]) -> int:
    return (row["start_time"] - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def _entry(server: FakeAnthropicServer, lib: str, call: str, observed: dict[str, Any]) -> dict[str, Any]:
    if call == "error":
        (entry,) = [e for e in server.requests if e["body"]["model"] == FAIL_MODEL
                    and e["headers"].get(CHILD_HEADER) == lib and within_call(e, observed)]  # fmt: skip
        return entry
    return server.by_response_id(observed["response_id"])


def _check_tokens(row: dict[str, Any], reply: Reply | None) -> None:
    if reply is None:
        assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (None, None, None)
        return
    assert row["input_tokens"] == reply.input_tokens  # inclusive of cache reads and writes
    assert (row["cache_read_tokens"], row["cache_write_tokens"]) == (reply.cache_read, reply.cache_write)
    assert row["uncached_input_tokens"] == reply.input_tokens - reply.cache_read
    assert row["output_tokens"] == reply.output_tokens


@pytest.mark.parametrize("lib", sorted(LIBS))
@pytest.mark.parametrize("call", CALLS)
def test_one_row_per_call_matches_the_server(lib: str, call: str, anthropic_ingested: dict[str, Ingested],
                                             anthropic_runs: tuple[FakeAnthropicServer, Any]) -> None:  # fmt: skip
    got, server, exp = _got(lib, anthropic_ingested), anthropic_runs[0], LIBS[lib]
    row, observed = got.rows[call], got.run.call(call)
    entry = _entry(server, lib, call, observed)
    streamed = bool(entry["body"].get("stream"))  # pydantic-ai streams even for agent.run
    assert row["source_convention"] == exp.convention and row["service"] == got.run.service_name
    assert (row["provider"], row["operation"]) == ("anthropic", "chat")
    assert row["request_model"] == (FAIL_MODEL if call == "error" else REQUEST_MODEL)
    assert (row["merged_span_ids"] is not None) is exp.merged[CALLS.index(call)]
    assert row["server_address"] == ("127.0.0.1" if exp.server else None)
    if call == "error":
        assert row["status"] == "error" and row["error_type"] and row["response_model"] is None
        _check_tokens(row, None)
    else:
        assert row["status"] == "ok" and row["response_model"] == RESPONSE_MODEL
        assert row["response_id"] == observed["response_id"]
        _check_tokens(row, STREAM_REPLY if streamed else NON_STREAM_REPLY)
    if call != "error" or lib not in ("logfire_anthropic",):
        assert row["streaming"] is streamed
    # Time: the row covers the server's handling and lies inside the caller's call, within 5 ms of it.
    start, end = _start_ns(row), _start_ns(row) + row["duration_ms"] * 1e6
    assert observed["start_ns"] <= start + CLOCK_SLACK_MS * 1e6 and start <= entry["received_ns"]
    assert end >= entry["last_byte_ns"] - CLOCK_SLACK_MS * 1e6
    assert row["duration_ms"] <= observed["total_ms"] + CLOCK_SLACK_MS
    if exp.timed[CALLS.index(call)]:
        check_timing(row, observed, ttft=streamed and exp.ttft and call != "error")
    if not (streamed and exp.ttft and call != "error"):
        assert row["ttft_ms"] is None, "TTFT only from a measured first token"
        return
    first_sent_ms = (entry["first_byte_ns"] - start) / 1e6
    assert first_sent_ms >= 1e3 * FIRST_TOKEN_DELAY_S - CLOCK_SLACK_MS
    if observed["ttft_ms"] is not None:
        assert first_sent_ms - CLOCK_SLACK_MS <= row["ttft_ms"] <= observed["ttft_ms"] + TTFT_TOL_MS
    assert row["decode_ms"] == pytest.approx(row["duration_ms"] - row["ttft_ms"], abs=0.01)


def _spans(capture: Path) -> list[dict[str, Any]]:
    with open_input(capture) as stream:
        return [s for chunk in iter_chunks(stream, capture.name) for s in decode_chunk(chunk).spans]


@pytest.mark.parametrize("lib", ["openinference_anthropic", "openllmetry_anthropic", "logfire_anthropic",
                                 "pydantic_ai"])  # fmt: skip
def test_split_by_emitter_in_both_orders_and_twice(lib: str, anthropic_ingested: dict[str, Ingested],
                                                   tmp_path: Path) -> None:  # fmt: skip
    got = _got(lib, anthropic_ingested)
    spans = _spans(got.run.capture)
    second = [s for s in spans if s["scope"] == "com.anthropic.sdk.python" or s["name"].startswith("streaming")]
    first = [s for s in spans if s not in second]
    files = []
    for name, part in (("a", first), ("b", second)):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_bytes(b"".join(otlp_line(s) + b"\n" for s in part))
    expected = [{k: v for k, v in r.items()} for r in got.rows.values()]
    for order in (files, files[::-1]):
        con = open_db(tmp_path / f"{order[0].stem}.duckdb")
        for path in (*order, *order):
            ingest_paths(con, [path])
        assert checked_rows(_rows(con), got.run.observed) == expected
        con.close()
