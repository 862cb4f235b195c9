"""OpenLIT around the real ``openai`` and ``anthropic`` clients, against the fake servers: one row per call.

OpenLIT 1.45 requires ``anthropic<1`` and ``openai<3``, so it cannot share the project's venv (anthropic 2.x,
openai 3.x): ``make install`` builds ``.venv-openlit`` from tests/instrumented/openlit-requirements.txt (OpenLIT
with the newest clients it accepts) and the children run with that venv's interpreter; everything else (fake
servers, capture receiver, ingest) runs here. What OpenLIT writes (CONVENTIONS.md, "Emitters of today"): the
``gen_ai.*`` keys with ``telemetry.sdk.name=openlit``, Anthropic's exclusive input count, a stream TTFT measured
from the response headers; its Anthropic span of a failed call carries no attribute at all (name ``chat <model>``,
scope ``openlit.instrumentation.anthropic``, error status, exception event) and is still stored as an error call
of that model. OpenLIT also instruments httpx: its HTTP client spans are non-LLM spans, skipped.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from instrumented import fake_anthropic, fake_openai
from instrumented.child import CHILD_HEADER
from instrumented.harness import ChildRun, LibSpec, run_children
from instrumented.truth import DURATION_TOL_MS, check_timing, checked_rows, within_call

from spanprism.api.storage.connect import open_db
from spanprism.ingest.pipeline import IngestSummary, ingest_paths

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: The OpenLIT venv's interpreter (not resolved: the symlink's venv is what makes its packages importable).
PYTHON = ROOT / ".venv-openlit" / "bin" / "python"
CALLS = ("non_stream", "stream", "error")
CLOCK_SLACK_MS = 1.0
SPECS = {
    "openlit_openai": LibSpec("openlit_openai", "openlit", python=PYTHON),
    "openlit_anthropic": LibSpec("openlit_anthropic", "openlit", python=PYTHON,
                                 script=ROOT / "tests" / "instrumented" / "child_anthropic.py"),
}  # fmt: skip
SERVERS = {"openlit_openai": fake_openai, "openlit_anthropic": fake_anthropic}


def _server(lib: str) -> Any:
    return fake_openai.FakeOpenAIServer() if lib == "openlit_openai" else fake_anthropic.FakeAnthropicServer()


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, ChildRun, IngestSummary, dict]]:
    out = {}
    for lib, spec in SPECS.items():
        if not spec.importable():
            continue
        fake = SERVERS[lib]
        server = _server(lib).start()
        try:
            run = run_children([spec], server, tmp_path_factory.mktemp(lib), model=fake.REQUEST_MODEL)[lib]
        finally:
            server.stop()
        con = open_db(tmp_path_factory.mktemp(f"db-{lib}") / "t.duckdb")
        summary = ingest_paths(con, [run.capture])
        rows = con.sql("SELECT * FROM llm_calls ORDER BY start_time").to_arrow_table().to_pylist()
        con.close()
        rows = checked_rows(rows, run.observed)
        assert len(rows) == len(CALLS), f"{lib}: {len(rows)} rows for 3 calls, summary {summary.as_dict()}"
        out[lib] = (server, run, summary, dict(zip(CALLS, rows, strict=True)))
    return out


def _start_ns(row: dict[str, Any]) -> int:
    return (row["start_time"] - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def _tokens(lib: str, call: str) -> tuple[int, int, int, int]:
    """(input inclusive of cache, cache read, cache write, output) the fake server answered."""
    if lib == "openlit_openai":
        r = fake_openai.STREAM_REPLY if call == "stream" else fake_openai.NON_STREAM_REPLY
        return r.prompt_tokens, r.cached_tokens, 0, r.completion_tokens  # OpenLIT writes OpenAI's absent writes as 0
    a = fake_anthropic.STREAM_REPLY if call == "stream" else fake_anthropic.NON_STREAM_REPLY
    return a.input_tokens, a.cache_read, a.cache_write, a.output_tokens


@pytest.mark.parametrize("lib", sorted(SPECS))
@pytest.mark.parametrize("call", CALLS)
def test_one_row_per_call_matches_the_server(lib: str, call: str, captured: dict[str, Any]) -> None:
    if lib not in captured:
        pytest.skip(f"{PYTHON} with openlit is missing: run `make install`")
    server, run, summary, rows = captured[lib]
    fake = SERVERS[lib]
    row, observed = rows[call], run.call(call)
    assert summary.conventions == {"openlit": 3} and summary.merged == 0
    assert row["source_convention"] == "openlit" and row["service"] == run.service_name
    assert (row["provider"], row["operation"]) == (lib.removeprefix("openlit_"), "chat")
    assert row["request_model"] == (fake.FAIL_MODEL if call == "error" else fake.REQUEST_MODEL)
    assert row["merged_span_ids"] is None
    if call == "error":
        (entry,) = [e for e in server.requests if e["body"]["model"] == fake.FAIL_MODEL
                    and e["headers"].get(CHILD_HEADER) == lib and within_call(e, observed)]  # fmt: skip
        assert (row["status"], row["error_type"], row["response_model"]) == ("error", "RateLimitError", None)
        assert (row["input_tokens"], row["output_tokens"], row["ttft_ms"]) == (None, None, None)
        # OpenAI's error span keeps its request attributes; Anthropic's has none (name, scope and status only).
        assert row["streaming"] is (False if lib == "openlit_openai" else None)
        assert row["server_address"] == ("127.0.0.1" if lib == "openlit_openai" else None)
    else:
        entry = server.by_response_id(observed["response_id"])
        assert row["status"] == "ok" and row["response_model"] == fake.RESPONSE_MODEL
        assert row["response_id"] == observed["response_id"] and row["server_address"] == "127.0.0.1"
        inp, read, write, out = _tokens(lib, call)
        assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (inp, read, write)
        assert (row["output_tokens"], row["uncached_input_tokens"]) == (out, inp - read)
        assert row["streaming"] is (call == "stream")
    # Time: the row lies inside the caller's call, covers the server's handling, and is within 5 ms of the caller.
    start, end = _start_ns(row), _start_ns(row) + row["duration_ms"] * 1e6
    assert observed["start_ns"] <= start + CLOCK_SLACK_MS * 1e6 and start <= entry["received_ns"]
    assert end >= entry["last_byte_ns"] - CLOCK_SLACK_MS * 1e6
    assert row["duration_ms"] <= observed["total_ms"] + CLOCK_SLACK_MS
    check_timing(row, observed, ttft=False)
    if call == "stream" and lib == "openlit_openai":
        # From the response headers to the first chunk: measured by the caller at the same points (the client handing
        # the stream over, the first chunk reaching it), within 5 ms when the call ran undisturbed.
        assert row["ttft_ms"] <= observed["ttft_ms"] + CLOCK_SLACK_MS
        if not observed["preempted"]:
            assert abs(row["ttft_ms"] - (observed["ttft_ms"] - observed["headers_ms"])) <= DURATION_TOL_MS
    else:  # Anthropic's stream "TTFT" is headers → message_start (~0 ms): not read
        assert row["ttft_ms"] is None
