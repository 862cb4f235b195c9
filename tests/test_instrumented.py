"""Golden tests from spans emitted by REAL instrumentation libraries around the official ``openai`` client.

Each library runs in its own process against a fake OpenAI server with known tokens and timing, exports OTLP/HTTP
to a capture receiver that writes a Collector ``format: proto`` file, and that file goes through the real ingest
pipeline into a fresh DuckDB. The assertions compare the stored rows with what the server sent and what the
client itself observed; ``EXPECTED`` records, per library, which fields the library exposes at all
(CONVENTIONS.md §8). Golden files pin the full rows; regenerate with ``SPANPRISM_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from instrumented.child import CHILD_HEADER
from instrumented.fake_openai import (
    CHUNK_GAP_S,
    FAIL_MODEL,
    FIRST_CHUNK_DELAY_S,
    NON_STREAM_REPLY,
    REQUEST_MODEL,
    RESPONSE_MODEL,
    STREAM_REPLY,
    SYSTEM_FINGERPRINT,
    FakeOpenAIServer,
    Reply,
    non_stream_delay_s,
    stream_chunk_count,
)
from instrumented.golden import golden_diff, golden_view
from instrumented.harness import LIBS, ChildRun, run_children
from instrumented.otlp_capture import read_records
from instrumented.truth import check_timing, checked_rows, within_call

from spanprism.api.storage.connect import open_db
from spanprism.ingest.pipeline import IngestSummary, ingest_paths

pytestmark = pytest.mark.slow

GOLDEN_DIR = Path(__file__).parent / "golden" / "instrumented"
UPDATE_GOLDEN = os.environ.get("SPANPRISM_UPDATE_GOLDEN") == "1"
CALLS = ("non_stream", "stream", "error")
#: Clock slack between the span's and the server's time_ns readings (µs storage truncation, scheduling).
CLOCK_SLACK_MS = 1.0
#: How late a chunk may be seen after the server sent it: a sanity bound for a loaded 2-core machine (measured
#: ~1 ms idle); the tight TTFT/ITL checks compare with the caller's own observations instead.
RECEIVE_LAG_MAX_MS = 50.0
#: Stored mean token gap vs the caller's: both see each chunk within ~0.1 ms of each other; a gap counted from a
#: non-token chunk (role, finish, usage) shifts the mean by a full gap / tokens = 3 ms here.
ITL_TOL_MS = 1.0


@dataclass(frozen=True, slots=True)
class Expected:
    """What one library exposes on its spans (CONVENTIONS.md §8), so which stored fields must be non-NULL."""

    convention: str
    cache_read: bool  # records prompt_tokens_details.cached_tokens
    ttft: bool  # a first-chunk timestamp on streamed spans
    chunk_events: bool  # one event per SSE chunk (ITL observable)
    streaming: tuple[bool | None, bool | None]  # stored flag for (non_stream, stream)
    server_address: bool
    response_id: bool
    fingerprint: tuple[bool, bool]  # (non_stream, stream)
    finish_reason: tuple[bool, bool]  # (non_stream, stream)


_OPENAI_V2 = Expected(
    convention="otel_semconv",
    cache_read=False,
    ttft=False,
    chunk_events=False,
    streaming=(None, None),
    server_address=False,
    response_id=True,
    fingerprint=(True, False),
    finish_reason=(True, False),
)
EXPECTED: dict[str, Expected] = {
    # With opentelemetry-util-genai 1.1b0 both modes take the util-genai path (is_experimental_mode() is always
    # True there), so the default run and the opt-in run emit the same attributes.
    "openai_v2": _OPENAI_V2,
    "openai_v2_latest": _OPENAI_V2,
    "openinference": Expected(
        convention="openinference",
        cache_read=True,
        ttft=True,
        chunk_events=False,
        streaming=(False, True),
        server_address=False,
        response_id=False,
        fingerprint=(False, False),
        finish_reason=(True, True),
    ),
    "openllmetry": Expected(
        convention="openllmetry",
        cache_read=True,
        ttft=True,
        chunk_events=True,
        streaming=(False, True),
        server_address=True,
        response_id=True,
        fingerprint=(True, False),
        finish_reason=(True, True),
    ),
}


@dataclass(slots=True)
class Ingested:
    """One library's capture after ingest: the summary and the stored rows keyed by call."""

    run: ChildRun
    summary: IngestSummary
    rows: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def instrumented_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeOpenAIServer, dict[str, ChildRun]]:
    """Every importable library's child, run once against one fake server (imports in parallel, calls in turn)."""
    specs = [s for s in LIBS if s.importable()]
    server = FakeOpenAIServer().start()
    try:
        runs = run_children(specs, server, tmp_path_factory.mktemp("instrumented")) if specs else {}
    finally:
        server.stop()
    return server, runs


def _query_rows(con: Any) -> list[dict[str, Any]]:
    return con.sql("SELECT * FROM llm_calls ORDER BY start_time").to_arrow_table().to_pylist()


@pytest.fixture(scope="module")
def instrumented_ingested(
    instrumented_runs: tuple[FakeOpenAIServer, dict[str, ChildRun]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Ingested]:
    """Each capture ingested into its own fresh DuckDB; rows keyed by call (the child makes them in order)."""
    out: dict[str, Ingested] = {}
    for lib, run in instrumented_runs[1].items():
        con = open_db(tmp_path_factory.mktemp(f"db-{lib}") / "t.duckdb")
        try:
            summary = ingest_paths(con, [run.capture])
            rows = checked_rows(_query_rows(con), run.observed)
        finally:
            con.close()
        assert len(rows) == len(CALLS), f"{lib}: stored {len(rows)} rows, summary {summary.as_dict()}"
        out[lib] = Ingested(run, summary, dict(zip(CALLS, rows, strict=True)))
    return out


def _lib(lib: str, ingested: dict[str, Ingested]) -> Ingested:
    if lib not in ingested:
        spec = next(s for s in LIBS if s.lib == lib)
        pytest.skip(f"{spec.module} is not importable, so {lib} spans cannot be produced")
    return ingested[lib]


LIB_IDS = [s.lib for s in LIBS]


def _start_ns(row: dict[str, Any]) -> int:
    return (row["start_time"] - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def _ms(ns: int) -> float:
    return ns / 1e6


def _check_common(row: dict[str, Any], got: Ingested, lib: str, call: str, server: FakeOpenAIServer) -> None:
    """Fields every call must carry, and the span's place on the server's clock."""
    exp, observed = EXPECTED[lib], got.run.call(call)
    assert len(row["trace_id"]) == 32 and len(row["span_id"]) == 16
    assert row["parent_span_id"] is None  # the LLM span is the root: nothing else is instrumented
    assert row["service"] == got.run.service_name
    assert row["provider"] == "openai"
    assert row["operation"] == "chat"
    assert row["source_convention"] == exp.convention
    assert row["request_model"] == (FAIL_MODEL if call == "error" else REQUEST_MODEL)
    assert row["server_address"] == ("127.0.0.1" if exp.server_address else None)
    assert row["server_port"] == (server.server_address[1] if exp.server_address else None)
    assert row["region"] is None and row["deployment"] is None  # a bare IP names neither
    # The span lies inside the client's call and covers the server's whole handling of the request.
    entry = _server_entry(server, lib, call, observed)
    start, end = _start_ns(row), _start_ns(row) + row["duration_ms"] * 1e6
    assert observed["start_ns"] <= start + CLOCK_SLACK_MS * 1e6
    assert start <= entry["received_ns"] + CLOCK_SLACK_MS * 1e6
    assert end >= entry["last_byte_ns"] - CLOCK_SLACK_MS * 1e6
    assert row["duration_ms"] <= observed["total_ms"] + CLOCK_SLACK_MS
    # Duration (and TTFT on the stream) within 5 ms of the caller's own clock, when the call ran undisturbed.
    check_timing(row, observed, ttft=call == "stream" and exp.ttft)


def _server_entry(server: FakeOpenAIServer, lib: str, call: str, observed: dict[str, Any]) -> dict[str, Any]:
    if call == "error":  # no response id: this child's request for the failing model during the reported call
        (entry,) = [e for e in server.requests if e["body"]["model"] == FAIL_MODEL
                    and e["headers"].get(CHILD_HEADER) == lib and within_call(e, observed)]  # fmt: skip
        return entry
    return server.by_response_id(observed["response_id"])


def _check_tokens(row: dict[str, Any], reply: Reply, exp: Expected) -> None:
    assert row["input_tokens"] == reply.prompt_tokens
    assert row["output_tokens"] == reply.completion_tokens
    assert row["cache_write_tokens"] is None  # OpenAI reports no cache writes
    if exp.cache_read:
        assert row["cache_read_tokens"] == reply.cached_tokens
        assert row["uncached_input_tokens"] == reply.prompt_tokens - reply.cached_tokens
    else:
        assert row["cache_read_tokens"] is None, "the library records no cached tokens: NULL, never a guessed 0"


def _check_answer(row: dict[str, Any], got: Ingested, lib: str, call: str, reply: Reply) -> None:
    exp, observed, i = EXPECTED[lib], got.run.call(call), CALLS.index(call)
    assert row["status"] == "ok" and row["error_type"] is None
    assert row["response_model"] == RESPONSE_MODEL == observed["response_model"]
    assert row["response_id"] == (observed["response_id"] if exp.response_id else None)
    assert row["system_fingerprint"] == (SYSTEM_FINGERPRINT if exp.fingerprint[i] else None)
    assert row["finish_reason"] == (reply.finish_reason if exp.finish_reason[i] else None)
    assert row["streaming"] is exp.streaming[i]
    _check_tokens(row, reply, exp)


@pytest.mark.parametrize("lib", LIB_IDS)
def test_capture_is_a_collector_proto_file(lib: str, instrumented_ingested: dict[str, Ingested]) -> None:
    """The receiver wrote every export, decompressed, as length-prefixed records the SDK really sent."""
    run = _lib(lib, instrumented_ingested).run
    assert run.observed["flushed"] is True
    requests = list(read_records(run.capture))
    assert len(requests) == run.exports >= 1
    spans = [s for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == run.spans == len(CALLS)
    services = {
        a.value.string_value
        for r in requests
        for rs in r.resource_spans
        for a in rs.resource.attributes
        if a.key == "service.name"
    }
    assert services == {run.service_name}
    assert set(run.encodings) == ({"gzip"} if next(s for s in LIBS if s.lib == lib).gzip else {""})


@pytest.mark.parametrize("lib", LIB_IDS)
def test_ingest_summary(lib: str, instrumented_ingested: dict[str, Ingested]) -> None:
    got = _lib(lib, instrumented_ingested)
    s = got.summary
    assert (s.spans_seen, s.calls_stored, s.duplicates, s.non_llm_skipped, s.quarantined) == (3, 3, 0, 0, 0)
    assert dict(s.conventions) == {EXPECTED[lib].convention: 3}
    assert not s.errors


@pytest.mark.parametrize("lib", LIB_IDS)
def test_non_streaming_call(
    lib: str, instrumented_ingested: dict[str, Ingested], instrumented_runs: tuple[FakeOpenAIServer, Any]
) -> None:
    got, server = _lib(lib, instrumented_ingested), instrumented_runs[0]
    row = got.rows["non_stream"]
    _check_common(row, got, lib, "non_stream", server)
    _check_answer(row, got, lib, "non_stream", NON_STREAM_REPLY)
    # No chunk was streamed: no TTFT and no inter-token latency, whatever the span's duration.
    assert (row["ttft_ms"], row["decode_ms"], row["itl_ms"], row["itl_p95_ms"]) == (None, None, None, None)
    assert row["duration_ms"] >= 1e3 * non_stream_delay_s(NON_STREAM_REPLY) - CLOCK_SLACK_MS


@pytest.mark.parametrize("lib", LIB_IDS)
def test_streaming_call(
    lib: str, instrumented_ingested: dict[str, Ingested], instrumented_runs: tuple[FakeOpenAIServer, Any]
) -> None:
    got, server, exp = _lib(lib, instrumented_ingested), instrumented_runs[0], EXPECTED[lib]
    row, observed = got.rows["stream"], got.run.call("stream")
    _check_common(row, got, lib, "stream", server)
    _check_answer(row, got, lib, "stream", STREAM_REPLY)
    entry = server.by_response_id(observed["response_id"])
    assert entry["body"]["stream_options"] == {"include_usage": True}
    assert observed["chunks"] == entry["chunks"] == stream_chunk_count(STREAM_REPLY, include_usage=True)
    if not exp.ttft:
        assert (row["ttft_ms"], row["decode_ms"], row["itl_ms"]) == (None, None, None), "never faked from duration"
        return
    ttft, first_sent_ms = row["ttft_ms"], _ms(entry["first_byte_ns"] - _start_ns(row))
    # The first chunk cannot be seen before the server sent it, which was the known delay after the request
    # arrived; and the library sees it no later than the caller does (whose clock started before the span).
    assert first_sent_ms >= 1e3 * FIRST_CHUNK_DELAY_S + _ms(entry["received_ns"] - _start_ns(row)) - CLOCK_SLACK_MS
    assert first_sent_ms - CLOCK_SLACK_MS <= ttft <= observed["ttft_ms"] + CLOCK_SLACK_MS
    # Sanity against the server alone: the first chunk, not the last one nor the whole span.
    assert ttft < first_sent_ms + RECEIVE_LAG_MAX_MS < row["duration_ms"]
    assert row["decode_ms"] == pytest.approx(row["duration_ms"] - ttft, abs=0.01)


@pytest.mark.parametrize("lib", LIB_IDS)
def test_streaming_inter_token_latency(
    lib: str, instrumented_ingested: dict[str, Ingested], instrumented_runs: tuple[FakeOpenAIServer, Any]
) -> None:
    """Stored ITL vs the gaps between text-carrying chunks as the caller itself saw them (same process, same
    moments as the library's events, so receive jitter cancels out); role, finish and usage chunks carry no token.
    """
    got, exp, server = _lib(lib, instrumented_ingested), EXPECTED[lib], instrumented_runs[0]
    row, observed = got.rows["stream"], got.run.call("stream")
    if not exp.ttft:
        assert (row["itl_ms"], row["itl_p95_ms"], row["chunk_count"]) == (None, None, None)
        return
    texts = [t for t, has_text in observed["chunk_ms"] if has_text]
    assert len(texts) == STREAM_REPLY.completion_tokens
    client_itl = (texts[-1] - texts[0]) / (len(texts) - 1)
    assert client_itl == pytest.approx(1e3 * CHUNK_GAP_S, abs=RECEIVE_LAG_MAX_MS / 2)  # the server's pacing
    if exp.chunk_events:
        assert row["chunk_count"] == stream_chunk_count(STREAM_REPLY, include_usage=True)
        assert row["itl_ms"] == pytest.approx(client_itl, abs=ITL_TOL_MS)
        gaps = [b - a for a, b in itertools.pairwise(texts)]
        assert min(gaps) - ITL_TOL_MS <= row["itl_p95_ms"] <= max(gaps) + ITL_TOL_MS
    else:
        # Without per-chunk events ITL can only be decode / (output − 1); decode runs from the first chunk to the
        # span's end, so it covers the caller's first-to-last-text window, and it starts no earlier than the
        # server sent the first chunk and ends no later than the caller's call returned.
        assert row["itl_p95_ms"] is None and row["chunk_count"] is None
        assert row["itl_ms"] == pytest.approx(row["decode_ms"] / (STREAM_REPLY.completion_tokens - 1), abs=0.01)
        assert texts[-1] - observed["ttft_ms"] - CLOCK_SLACK_MS <= row["decode_ms"]
        caller_end_ns = observed["start_ns"] + observed["total_ms"] * 1e6
        first_sent_ns = server.by_response_id(observed["response_id"])["first_byte_ns"]
        assert row["decode_ms"] <= _ms(caller_end_ns - first_sent_ns) + CLOCK_SLACK_MS


@pytest.mark.parametrize("lib", LIB_IDS)
def test_failing_call(
    lib: str, instrumented_ingested: dict[str, Ingested], instrumented_runs: tuple[FakeOpenAIServer, Any]
) -> None:
    got, server = _lib(lib, instrumented_ingested), instrumented_runs[0]
    row, observed = got.rows["error"], got.run.call("error")
    assert observed["status_code"] == 429 and observed["error_type"] == "RateLimitError"
    _check_common(row, got, lib, "error", server)
    assert row["status"] == "error"
    # Libraries name it differently (RateLimitError, openai.RateLimitError, "<class 'openai.RateLimitError'>");
    # the stored value must name the class, never Python's repr of it.
    assert row["error_type"] is not None and row["error_type"].endswith("RateLimitError")
    assert "<class" not in row["error_type"]
    assert row["streaming"] is EXPECTED[lib].streaming[0]  # a plain (non-streaming) request
    # The server answered nothing but the error: no model, id, fingerprint, finish reason, tokens or TTFT.
    for key in (
        "response_model",
        "response_id",
        "system_fingerprint",
        "finish_reason",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "uncached_input_tokens",
        "ttft_ms",
        "itl_ms",
    ):
        assert row[key] is None, key


@pytest.mark.parametrize("lib", LIB_IDS)
def test_error_type_groups_across_libraries(lib: str, instrumented_ingested: dict[str, Ingested]) -> None:
    """The same 429 from the same client is stored under one error_type, whichever library recorded it."""
    assert _lib(lib, instrumented_ingested).rows["error"]["error_type"] == "RateLimitError"


@pytest.mark.parametrize("lib", LIB_IDS)
def test_reingest_stores_nothing(lib: str, instrumented_ingested: dict[str, Ingested], tmp_path: Path) -> None:
    got = _lib(lib, instrumented_ingested)
    con = open_db(tmp_path / "t.duckdb")
    try:
        first = ingest_paths(con, [got.run.capture])
        before = _query_rows(con)
        again = ingest_paths(con, [got.run.capture])
        after = _query_rows(con)
    finally:
        con.close()
    assert (first.calls_stored, first.duplicates) == (3, 0)
    assert (again.calls_stored, again.duplicates, again.quarantined) == (0, 3, 0)
    assert after == before


@pytest.mark.parametrize("lib", LIB_IDS)
def test_golden(lib: str, instrumented_ingested: dict[str, Ingested]) -> None:
    got = _lib(lib, instrumented_ingested)
    actual = json.loads(json.dumps(golden_view(got.rows, got.summary), default=str))
    path = GOLDEN_DIR / f"{lib}.json"
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"{path} missing: run with SPANPRISM_UPDATE_GOLDEN=1"
    diff = golden_diff(json.loads(path.read_text()), actual)
    assert not diff, "\n".join(diff)
