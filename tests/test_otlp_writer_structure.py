"""attribution.simulator.otlp.writer: structure of the OTLP JSON it writes.

The envelope and value encoding (CONVENTIONS §6), each convention's keys, the chunk timing (TTFT and mean ITL
exact, p95 close), the OpenLIT non-streaming trap, message content, determinism per seed, and Arrow rows encoding
like dict rows. Round trips through the ingest pipeline are in test_otlp_writer_roundtrip.py.
"""

from __future__ import annotations

import gzip
import itertools
import random
import re
import statistics
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from support.otlp_rows import make_row, rows_for

from spanprism.attribution.simulator.otlp.encoding import chunk_gaps_ms, to_ns
from spanprism.attribution.simulator.otlp.writer import CONVENTIONS, encode_call, iter_export_lines, write_export

HEX = re.compile(r"^[0-9a-f]+$")
ANY_VALUE_KEYS = {"stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue", "bytesValue"}


def _attrs(span: Mapping[str, Any]) -> dict[str, Any]:
    """Decode an OTLP attribute list back to plain values (test helper, independent of ingest)."""
    out: dict[str, Any] = {}
    for kv in span.get("attributes", []):
        ((kind, value),) = kv["value"].items()
        out[kv["key"]] = int(value) if kind == "intValue" else value
    return out


def _check_any_value(value: Mapping[str, Any]) -> None:
    assert len(value) == 1 and set(value) <= ANY_VALUE_KEYS, value
    if "intValue" in value:
        assert isinstance(value["intValue"], str) and value["intValue"].lstrip("-").isdigit()
    if "arrayValue" in value:
        for item in value["arrayValue"]["values"]:
            _check_any_value(item)


def _check_span(span: Mapping[str, Any]) -> None:
    assert len(span["traceId"]) == 32 and HEX.match(span["traceId"])
    assert len(span["spanId"]) == 16 and HEX.match(span["spanId"])
    if "parentSpanId" in span:
        assert len(span["parentSpanId"]) == 16 and HEX.match(span["parentSpanId"])
    assert isinstance(span["kind"], int) and 1 <= span["kind"] <= 5
    start, end = span["startTimeUnixNano"], span["endTimeUnixNano"]
    assert isinstance(start, str) and start.isdigit() and isinstance(end, str) and int(end) >= int(start)
    for kv in span["attributes"]:
        assert set(kv) == {"key", "value"}
        _check_any_value(kv["value"])
    for event in span.get("events", []):
        assert event["timeUnixNano"].isdigit() and isinstance(event["name"], str)
        for kv in event.get("attributes", []):
            _check_any_value(kv["value"])
    assert span["status"].get("code", 0) in (0, 1, 2)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_export_lines_are_valid_otlp_json(convention: str) -> None:
    rows = rows_for(convention, seed=1)
    lines = list(
        iter_export_lines(
            rows, lambda r: r["source_convention"], spans_per_line=7, with_content=True, extra_non_llm=0.5, seed=3
        )
    )
    spans = 0
    for line in lines:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        doc = orjson.loads(line)
        assert set(doc) == {"resourceSpans"}
        for rs in doc["resourceSpans"]:
            resource = rs["resource"]["attributes"]
            assert [kv["key"] for kv in resource].count("service.name") == 1
            for ss in rs["scopeSpans"]:
                assert ss["scope"]["name"]
                for span in ss["spans"]:
                    _check_span(span)
                    spans += 1
    assert spans == len(rows) + len(rows) // 2


EXPECTED_KEYS = {
    "otel_semconv": {
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.request.stream",
        "gen_ai.response.time_to_first_chunk",
        "server.address",
        "openai.response.system_fingerprint",
    },
    "otel_semconv_legacy": {"gen_ai.system", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"},
    "openinference": {
        "openinference.span.kind",
        "llm.token_count.prompt",
        "llm.invocation_parameters",
        "llm.model_name",
        "llm.prompt_template.version",
    },
    "openllmetry": {
        "gen_ai.usage.input_tokens",
        "gen_ai.is_streaming",
        "gen_ai.openai.api_base",
        "gen_ai.usage.cache_read.input_tokens",
    },
    "openllmetry_legacy": {
        "gen_ai.usage.prompt_tokens",
        "llm.is_streaming",
        "llm.request.type",
        "llm.usage.total_tokens",
        "gen_ai.usage.cache_read_input_tokens",
    },
    "openlit": {
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "gen_ai.request.stream",
        "telemetry.sdk.name",
    },
    "langfuse": {
        "langfuse.observation.completion_start_time",
        "langfuse.observation.usage_details",
        "langfuse.observation.type",
    },
    "vllm": {
        "gen_ai.latency.time_to_first_token",
        "gen_ai.latency.e2e",
        "gen_ai.latency.time_in_queue",
        "gen_ai.usage.prompt_tokens",
    },
}


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_convention_keys_present(convention: str) -> None:
    row = make_row(random.Random(5), 0, streaming=True)
    attrs = _attrs(encode_call(row, convention))
    assert EXPECTED_KEYS[convention] <= set(attrs), EXPECTED_KEYS[convention] - set(attrs)
    assert (attrs.get("spanprism.prompt_key") == row["prompt_key"]) is (convention != "vllm")


def test_null_fields_are_omitted_and_nonstreaming_has_no_ttft() -> None:
    row = make_row(random.Random(6), 0, streaming=False)
    row.update(system_fingerprint=None, session_id=None, cache_read_tokens=None)
    for convention in CONVENTIONS:
        span = encode_call(row, convention)
        attrs = _attrs(span)
        assert "openai.response.system_fingerprint" not in attrs and "gen_ai.conversation.id" not in attrs
        assert "gen_ai.response.time_to_first_chunk" not in attrs
        assert "langfuse.observation.completion_start_time" not in attrs
        names = {e["name"] for e in span.get("events", [])}
        assert not names & {
            "First Token Stream Event",
            "gen_ai.content.completion.chunk",
            "llm.content.completion.chunk",
        }


@pytest.mark.parametrize(
    ("convention", "event"),
    [("openllmetry", "gen_ai.content.completion.chunk"), ("openllmetry_legacy", "llm.content.completion.chunk")],
)
def test_chunk_events_reproduce_ttft_and_itl(convention: str, event: str) -> None:
    rng = random.Random(11)
    for i in range(12):
        row = make_row(rng, i, streaming=True)
        span = encode_call(row, convention, rng=rng)
        times = [int(e["timeUnixNano"]) for e in span["events"] if e["name"] == event]
        assert len(times) == row["output_tokens"]
        start = int(span["startTimeUnixNano"])
        assert abs((times[0] - start) / 1e6 - row["ttft_ms"]) < 1e-6
        gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(times)]
        assert abs(statistics.fmean(gaps) - row["itl_ms"]) < 1e-6
        p95 = statistics.quantiles(gaps, n=100, method="inclusive")[94]
        assert p95 == pytest.approx(row["itl_p95_ms"], rel=0.05)
        assert times[-1] <= int(span["endTimeUnixNano"])


def test_chunk_gaps_keep_exact_mean_when_p95_is_unreachable() -> None:
    gaps = chunk_gaps_ms(10, 10.0, 500.0, random.Random(2))
    assert statistics.fmean(gaps) == pytest.approx(10.0, abs=1e-9) and min(gaps) > 0
    assert chunk_gaps_ms(5, 7.0, 7.0, random.Random(2)) == [7.0] * 5


def test_openlit_nonstreaming_trap() -> None:
    row = make_row(random.Random(8), 0, streaming=False)
    span = encode_call(row, "openlit")
    attrs = _attrs(span)
    assert attrs["gen_ai.request.stream"] is False
    assert attrs["gen_ai.server.time_to_first_token"] == pytest.approx(row["duration_ms"] / 1000)
    assert attrs["gen_ai.server.time_per_output_token"] == 0.0
    assert "events" not in span


def test_anthropic_raw_usage_is_exclusive_where_the_library_does_it() -> None:
    row = make_row(random.Random(9), 2, streaming=True)  # route 2 = anthropic
    row.update(input_tokens=5000, cache_read_tokens=3000, cache_write_tokens=500)
    assert _attrs(encode_call(row, "openlit"))["gen_ai.usage.input_tokens"] == 1500
    usage = orjson.loads(_attrs(encode_call(row, "langfuse"))["langfuse.observation.usage_details"])
    assert usage == {
        "input_tokens": 1500,
        "output_tokens": row["output_tokens"],
        "cache_read_input_tokens": 3000,
        "cache_creation_input_tokens": 500,
    }
    for convention in ("otel_semconv", "openllmetry", "openllmetry_legacy"):
        attrs = _attrs(encode_call(row, convention))
        assert attrs.get("gen_ai.usage.input_tokens", attrs.get("gen_ai.usage.prompt_tokens")) == 5000
    assert _attrs(encode_call(row, "openinference"))["llm.token_count.prompt"] == 5000


def test_with_content_adds_messages_of_about_two_kilobytes() -> None:
    row = make_row(random.Random(10), 0, streaming=False)
    traceloop = _attrs(encode_call(row, "openllmetry", with_content=True))
    assert traceloop["gen_ai.prompt.1.role"] == "user" and traceloop["gen_ai.completion.0.content"]
    oi = _attrs(encode_call(row, "openinference", with_content=True))
    assert oi["llm.input_messages.0.message.role"] == "system" and orjson.loads(oi["input.value"])["messages"]
    for convention in CONVENTIONS[:-1]:  # vLLM server spans carry no content
        size = len(orjson.dumps(encode_call(row, convention, with_content=True)))
        assert 1500 < size < 3500, (convention, size)


def test_output_is_deterministic_for_a_seed(tmp_path) -> None:
    rows = rows_for("openllmetry", seed=4)

    def render(seed: int) -> bytes:
        return b"".join(iter_export_lines(rows, lambda r: "openllmetry", extra_non_llm=0.3, seed=seed))

    assert render(1) == render(1) and render(1) != render(2)
    counts = write_export(tmp_path / "x.jsonl.gz", rows, "openllmetry", extra_non_llm=0.3, seed=1)
    assert gzip.decompress((tmp_path / "x.jsonl.gz").read_bytes()) == render(1)
    assert (counts.llm_spans, counts.non_llm_spans) == (16, 4)


def test_start_time_forms_agree() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert to_ns(moment) == to_ns(moment.replace(tzinfo=None)) == to_ns(round(moment.timestamp() * 1e6))
    assert to_ns(moment) == 1767323045678901000


def test_arrow_rows_encode_like_dict_rows() -> None:
    import pyarrow as pa

    from spanprism.attribution.simulator.otlp.writer import iter_table_rows
    from spanprism.models.schema import conform

    rows = rows_for("otel_semconv", seed=12)
    table = conform(pa.Table.from_pylist(rows))
    via_arrow = [encode_call(r, "openllmetry", rng=random.Random(1)) for r in iter_table_rows(table, batch_rows=5)]
    direct = [encode_call(r, "openllmetry", rng=random.Random(1)) for r in rows]
    assert via_arrow == direct
