"""Logfire and Langfuse around the real ``openai`` client, against the fake OpenAI server: one row per call.

Same harness as tests/test_instrumented.py (one child process per library, OTLP capture, real ingest), with the
fields these two emitters expose (CONVENTIONS.md, "Emitters of today"): Logfire splits a stream into a request
span (ends at the response headers) and a ``streaming response`` log span (usage, response model), folded into one
row; Langfuse writes ``langfuse.observation.*`` (usage as a raw payload, a completion start time on streams, no
provider key). Langfuse's "host" is the capture receiver: no hosted backend is involved.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from typing import Any

import pytest
from instrumented.child import CHILD_HEADER
from instrumented.fake_openai import (
    FAIL_MODEL,
    FIRST_CHUNK_DELAY_S,
    NON_STREAM_REPLY,
    REQUEST_MODEL,
    RESPONSE_MODEL,
    STREAM_REPLY,
    FakeOpenAIServer,
)
from instrumented.harness import ChildRun, LibSpec, run_children
from instrumented.truth import check_timing, checked_rows, within_call

from spanprism.api.storage.connect import open_db
from spanprism.ingest.pipeline import ingest_paths

pytestmark = pytest.mark.slow

CALLS = ("non_stream", "stream", "error")
CLOCK_SLACK_MS = 1.0
LIBS = {"logfire_openai": "logfire", "langfuse_openai": "langfuse"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeOpenAIServer, dict[str, ChildRun]]:
    specs = [LibSpec(lib, module) for lib, module in LIBS.items() if importlib.util.find_spec(module)]
    server = FakeOpenAIServer().start()
    try:
        done = run_children(specs, server, tmp_path_factory.mktemp("more")) if specs else {}
    finally:
        server.stop()
    return server, done


@pytest.fixture(scope="module")
def stored(runs: tuple[FakeOpenAIServer, dict[str, ChildRun]],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict[str, Any]]]:  # fmt: skip
    out = {}
    for lib, run in runs[1].items():
        con = open_db(tmp_path_factory.mktemp(f"db-{lib}") / "t.duckdb")
        ingest_paths(con, [run.capture])
        rows = checked_rows(con.sql("SELECT * FROM llm_calls ORDER BY start_time").to_arrow_table().to_pylist(),
                            run.observed)  # fmt: skip
        con.close()
        assert len(rows) == len(CALLS), f"{lib}: {len(rows)} rows for 3 calls"
        out[lib] = dict(zip(CALLS, rows, strict=True))
    return out


def _start_ns(row: dict[str, Any]) -> int:
    return (row["start_time"] - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


@pytest.mark.parametrize("lib", sorted(LIBS))
@pytest.mark.parametrize("call", CALLS)
def test_one_row_per_call(lib: str, call: str, stored: dict[str, Any], runs: tuple[FakeOpenAIServer, Any]) -> None:
    if lib not in stored:
        pytest.skip(f"{LIBS[lib]} is not importable")
    server, run = runs[0], runs[1][lib]
    row, observed = stored[lib][call], run.call(call)
    if call == "error":
        (entry,) = [e for e in server.requests if e["body"]["model"] == FAIL_MODEL
                    and e["headers"].get(CHILD_HEADER) == lib and within_call(e, observed)]  # fmt: skip
        assert row["status"] == "error" and row["input_tokens"] is None and row["response_model"] is None
        assert row["ttft_ms"] is None
    else:
        entry = server.by_response_id(observed["response_id"])
        reply = STREAM_REPLY if call == "stream" else NON_STREAM_REPLY
        # Langfuse's only model key (model.name) is read as the request model: no response model stored.
        assert row["status"] == "ok" and row["response_model"] == (None if lib == "langfuse_openai" else RESPONSE_MODEL)
        assert (row["input_tokens"], row["output_tokens"]) == (reply.prompt_tokens, reply.completion_tokens)
        assert row["cache_read_tokens"] == reply.cached_tokens
        # Langfuse says nothing about streaming on a plain call (no flag, no completion start time): NULL.
        assert row["streaming"] is (True if call == "stream" else (None if lib == "langfuse_openai" else False))
    assert row["source_convention"] == LIBS[lib] and row["service"] == run.service_name
    if lib == "logfire_openai":  # Langfuse names the snapshot as its model, and no provider
        assert (row["provider"], row["request_model"]) == ("openai", FAIL_MODEL if call == "error" else REQUEST_MODEL)
    assert (row["merged_span_ids"] is not None) is (lib == "logfire_openai" and call == "stream")
    start, end = _start_ns(row), _start_ns(row) + row["duration_ms"] * 1e6
    assert observed["start_ns"] <= start + CLOCK_SLACK_MS * 1e6 and start <= entry["received_ns"]
    assert end >= entry["last_byte_ns"] - CLOCK_SLACK_MS * 1e6
    assert row["duration_ms"] <= observed["total_ms"] + CLOCK_SLACK_MS
    check_timing(row, observed, ttft=call == "stream" and lib == "langfuse_openai")
    if call == "stream":  # end >= the last byte above: the stream's end, not the headers' (Logfire's request span)
        if lib == "langfuse_openai":  # completion_start_time: the first chunk
            first_sent_ms = (entry["first_byte_ns"] - start) / 1e6
            assert first_sent_ms >= 1e3 * FIRST_CHUNK_DELAY_S - CLOCK_SLACK_MS
            assert first_sent_ms - CLOCK_SLACK_MS <= row["ttft_ms"] <= observed["ttft_ms"] + CLOCK_SLACK_MS
        else:
            assert row["ttft_ms"] is None  # Logfire records no first-token time
