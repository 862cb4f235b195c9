"""normalize: every convention's fixture against hand-checked numbers and a golden file, plus bad input.

Fixtures (tests/fixtures/normalize/*.json) are SpanRecord-shaped dicts without source/location/raw; goldens
(tests/golden/normalize/*.json) hold the full NormalizeResult. Regenerate goldens with
``SPANPRISM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_normalize.py`` and review the diff: the hand-written
assertions below pin the numbers that matter (TTFT = event/attribute time − start, ITL, token arithmetic).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import orjson
import pytest
from support.normalize_fixtures import FIXTURES, HERE, load_spans, run

from spanprism.ingest.normalize import normalize
from spanprism.ingest.records import NormalizeResult, SpanRecord
from spanprism.models.schema import LLM_CALLS_SCHEMA, SOURCE_CONVENTIONS

GOLDEN = HERE / "golden" / "normalize"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def rows(name: str) -> list[dict[str, Any]]:
    return run(name).table.to_pylist()


def as_json(result: NormalizeResult) -> dict[str, Any]:
    table_rows = result.table.to_pylist()
    for row in table_rows:
        row["start_time"] = row["start_time"].isoformat()
    return {
        "rows": table_rows,
        "quarantined": [{"location": q.location, "reason": q.reason} for q in result.quarantined],
        "non_llm_skipped": result.non_llm_skipped,
        "conventions": dict(sorted(result.conventions.items())),
    }


@pytest.mark.parametrize("name", NAMES)
def test_golden(name: str) -> None:
    result = run(name)
    assert result.table.schema == LLM_CALLS_SCHEMA
    assert result.table.column("ingest_batch").null_count == result.table.num_rows
    assert set(result.conventions) <= set(SOURCE_CONVENTIONS)
    assert sum(result.conventions.values()) == result.table.num_rows
    actual = orjson.loads(orjson.dumps(as_json(result)))
    path = GOLDEN / f"{name}.json"
    if os.environ.get("SPANPRISM_UPDATE_GOLDEN") == "1":
        path.write_bytes(orjson.dumps(actual, option=orjson.OPT_INDENT_2) + b"\n")
    assert actual == orjson.loads(path.read_bytes())


def test_otel_current_with_cache_and_ttft() -> None:
    result = run("otel_current")
    assert result.non_llm_skipped == 4  # embeddings, HTTP, tool, DB
    (row,) = result.table.to_pylist()
    assert row["source_convention"] == "otel_semconv"
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (1200, 1024, 0)
    assert row["uncached_input_tokens"] == 1200 - 1024
    assert (row["output_tokens"], row["reasoning_tokens"]) == (50, 10)
    assert row["ttft_ms"] == pytest.approx(350.0)
    assert row["decode_ms"] == pytest.approx(1500.0 - 350.0)
    assert row["itl_ms"] == pytest.approx((1500.0 - 350.0) / 49)  # decode / (output − 1), no chunk events
    assert row["itl_p95_ms"] is None and row["chunk_count"] is None
    assert row["streaming"] is True and row["status"] == "ok"
    assert (row["server_address"], row["server_port"], row["provider"]) == ("api.openai.com", 443, "openai")
    assert (row["finish_reason"], row["system_fingerprint"]) == ("stop", "fp_abc123")
    assert (row["prompt_key"], row["session_id"], row["tenant"]) == ("support-answer@3", "conv-1", "acme")
    assert (row["service"], row["operation"], row["response_id"]) == ("chat-api", "chat", "chatcmpl-A1")


def test_deprecated_names_map_to_current_values() -> None:
    by_model = {r["request_model"]: r for r in rows("otel_deprecated")}
    assert by_model["grok-4"]["provider"] == "x_ai"
    assert by_model["grok-4"]["system_fingerprint"] == "fp_old"
    assert (by_model["grok-4"]["input_tokens"], by_model["grok-4"]["output_tokens"]) == (300, 20)
    assert by_model["gemini-2.5-flash"]["provider"] == "gcp.gemini"
    assert by_model["mistral-large"]["provider"] == "azure.ai.inference"
    assert by_model["mistral-large"]["system_fingerprint"] == "fp_older"
    assert {r["source_convention"] for r in by_model.values()} == {"otel_semconv_legacy"}


def test_openai_v2_default_shape() -> None:
    ok, err = rows("openai_v2")
    assert ok["ttft_ms"] is None and ok["decode_ms"] is None and ok["itl_ms"] is None  # never faked from duration
    assert ok["streaming"] is None  # openai-v2 does not say
    assert ok["cache_read_tokens"] is None and ok["uncached_input_tokens"] is None  # unknown, not 0
    assert ok["duration_ms"] == pytest.approx(812.5)
    assert ok["source_convention"] == "otel_semconv_legacy" and ok["status"] == "ok"
    assert (err["status"], err["error_type"]) == ("error", "RateLimitError")
    assert err["input_tokens"] is None


def test_openinference() -> None:
    result = run("openinference")
    assert result.non_llm_skipped == 2  # CHAIN and EMBEDDING
    stream, anthropic, failed = result.table.to_pylist()
    assert stream["ttft_ms"] == pytest.approx(420.0)  # First Token Stream Event − start
    assert stream["decode_ms"] == pytest.approx(2000.0)
    assert stream["itl_ms"] == pytest.approx(2000.0 / 100)
    assert (stream["request_model"], stream["response_model"]) == ("gpt-4o", "gpt-4o-2024-08-06")
    assert stream["streaming"] is True and stream["service"] == "rag-app" and stream["operation"] == "chat"
    assert (stream["input_tokens"], stream["cache_read_tokens"], stream["uncached_input_tokens"]) == (2048, 1536, 512)
    digest = hashlib.sha1(b"Answer using {context}").hexdigest()[:12]
    assert stream["prompt_key"] == f"tpl:{digest}@v2"
    assert stream["session_id"] == "sess-9" and stream["finish_reason"] == "stop"
    # Anthropic via OpenInference omits zero cache counts: absence means 0 there.
    assert (anthropic["cache_read_tokens"], anthropic["cache_write_tokens"], anthropic["uncached_input_tokens"]) == (
        0,
        0,
        900,
    )
    assert anthropic["streaming"] is False and anthropic["provider"] == "anthropic"
    assert (failed["status"], failed["error_type"]) == ("error", "APIConnectionError")


def test_openllmetry_new_chunk_events() -> None:
    stream, err, role_first = rows("openllmetry_new")
    assert stream["source_convention"] == "openllmetry"
    assert stream["ttft_ms"] == pytest.approx(300.0)
    assert stream["chunk_count"] == 7  # 5 tokens + finish + usage chunks
    # Token chunks at 300, 320, 345, 365, 405 ms (the two trailing empty chunks excluded): gaps 20, 25, 20, 40.
    assert stream["itl_ms"] == pytest.approx((20 + 25 + 20 + 40) / 4)
    assert stream["itl_p95_ms"] == pytest.approx(25 + (40 - 25) * 0.85)
    assert stream["decode_ms"] == pytest.approx(120.0)
    assert (stream["server_address"], stream["provider"]) == ("api.openai.com", "openai")
    assert stream["cache_read_tokens"] == 0 and stream["uncached_input_tokens"] == 20
    assert (err["status"], err["error_type"], err["streaming"]) == ("error", "RateLimitError", False)
    # output + 3 events (role chunk first, then 3 tokens at 200.5, 230, 270 ms, then finish and usage).
    assert (role_first["ttft_ms"], role_first["chunk_count"]) == (pytest.approx(200.0), 6)
    assert role_first["itl_ms"] == pytest.approx((29.5 + 40.0) / 2)
    assert role_first["itl_p95_ms"] == pytest.approx(29.5 + 10.5 * 0.95)


def test_openllmetry_old_chunk_events_and_azure_base() -> None:
    result = run("openllmetry_old")
    assert result.non_llm_skipped == 1  # llm.request.type=embedding
    (row,) = result.table.to_pylist()
    assert row["source_convention"] == "openllmetry_legacy"
    assert (row["ttft_ms"], row["chunk_count"]) == (pytest.approx(500.0), 5)
    assert row["itl_ms"] == pytest.approx(45.0)  # chunks 500, 530, 590 → gaps 30, 60
    assert row["itl_p95_ms"] == pytest.approx(30 + 30 * 0.95)
    assert (row["provider"], row["server_address"], row["deployment"]) == (
        "azure.ai.openai",
        "myres.openai.azure.com",
        "gpt4o-prod",
    )
    assert (row["input_tokens"], row["output_tokens"], row["streaming"]) == (30, 3, True)
    assert row["system_fingerprint"] == "fp_az" and row["operation"] == "chat"


def test_openlit_ttft_only_when_streaming() -> None:
    streamed, not_streamed, unknown = rows("openlit")
    assert streamed["ttft_ms"] == pytest.approx(250.0) and streamed["itl_ms"] == pytest.approx(20.0)
    assert streamed["decode_ms"] == pytest.approx(750.0)
    for row in (not_streamed, unknown):  # OpenLIT sets TTFT = duration there: ignored
        assert row["ttft_ms"] is None and row["itl_ms"] is None and row["decode_ms"] is None
    assert not_streamed["streaming"] is False and unknown["streaming"] is None
    assert not_streamed["service"] == "openlit-app"  # span service.name when the resource has none
    assert {r["source_convention"] for r in (streamed, not_streamed, unknown)} == {"openlit"}


def test_langfuse_completion_start_plain_and_double_encoded() -> None:
    result = run("langfuse")
    assert result.non_llm_skipped == 1
    plain, double = result.table.to_pylist()
    assert plain["ttft_ms"] == pytest.approx(275.0)
    assert double["ttft_ms"] == pytest.approx(100.5)
    assert plain["request_model"] == "gpt-4.1" and plain["response_model"] == "gpt-4.1-2025-04-14"
    assert (plain["prompt_key"], plain["session_id"]) == ("summarize@4", "lf-sess")
    assert plain["streaming"] is True and plain["source_convention"] == "langfuse"


def test_langfuse_user_as_tenant() -> None:
    plain, _ = run("langfuse", tenant="langfuse.user.id").table.to_pylist()
    assert plain["tenant"] == "user-42"


def test_vercel_ms_to_first_chunk() -> None:
    result = run("vercel_ai")
    assert result.non_llm_skipped == 1  # the outer ai.streamText span wraps the real call
    new, old = result.table.to_pylist()
    assert new["ttft_ms"] == pytest.approx(180.5) and new["provider"] == "openai"
    assert old["ttft_ms"] == pytest.approx(95.0) and old["provider"] == "anthropic"
    assert old["itl_ms"] == pytest.approx(105.0)  # (200 − 95) / (2 − 1)
    assert {new["source_convention"], old["source_convention"]} == {"vercel_ai"}


def test_vllm_server_span() -> None:
    (row,) = rows("vllm")
    assert (row["provider"], row["source_convention"], row["streaming"]) == ("vllm", "vllm", None)
    assert row["ttft_ms"] == pytest.approx(120.0)
    assert row["queue_ms"] == pytest.approx(50.0)
    assert row["decode_ms"] == pytest.approx(2560.0)
    assert row["itl_ms"] == pytest.approx(2560.0 / 128)
    assert row["provider_request_id"] == "chatcmpl-vllm-1"
    assert (row["input_tokens"], row["output_tokens"]) == (512, 129)


def test_raw_usage_made_inclusive() -> None:
    anthropic, split, gemini, bedrock = rows("raw_usage")
    assert anthropic["input_tokens"] == 50 + 4000 + 1000  # Anthropic counts exclusively
    assert (anthropic["cache_read_tokens"], anthropic["cache_write_tokens"]) == (4000, 1000)
    assert anthropic["uncached_input_tokens"] == 1050  # cache writes are prefilled
    assert anthropic["source_convention"] == "raw_usage" and anthropic["provider_request_id"] == "req_011"
    assert (split["input_tokens"], split["cache_write_tokens"], split["response_id"]) == (312, 300, "msg_01")
    assert split["cache_read_tokens"] is None and split["uncached_input_tokens"] is None
    assert (gemini["input_tokens"], gemini["cache_read_tokens"], gemini["uncached_input_tokens"]) == (3000, 2048, 952)
    assert (gemini["output_tokens"], gemini["reasoning_tokens"]) == (320, 120)
    assert (gemini["provider"], gemini["region"], gemini["response_id"]) == ("gcp.vertex_ai", "us-central1", "resp-g1")
    assert (bedrock["input_tokens"], bedrock["cache_read_tokens"], bedrock["uncached_input_tokens"]) == (1000, 900, 100)


def test_raw_usage_only_fills_what_attributes_lack() -> None:
    # Attributes win for input/output; the raw payload only fills the cache and reasoning they lack, and the
    # tokens did not come from the raw payload alone, so the row is plain OTel, not raw_usage.
    (responses,) = rows("raw_usage_fills_gaps")
    assert (responses["input_tokens"], responses["cache_read_tokens"], responses["reasoning_tokens"]) == (128, 64, 20)
    assert responses["source_convention"] == "otel_semconv"


def test_bedrock_region_and_provider_from_host() -> None:
    explicit, fips, resource = rows("bedrock")
    assert (explicit["region"], explicit["provider"], explicit["provider_request_id"]) == (
        "eu-west-1",
        "aws.bedrock",
        "a1b2c3",
    )
    assert (fips["region"], fips["provider"], fips["server_port"]) == ("us-east-1", "aws.bedrock", 443)
    assert resource["region"] == "us-west-2"  # the endpoint host beats the app's own resource cloud.region


def test_vertex_host_and_url() -> None:
    host, url = rows("vertex")
    assert (host["provider"], host["region"]) == ("gcp.vertex_ai", "europe-west4")
    assert (url["provider"], url["region"], url["server_address"]) == (
        "gcp.vertex_ai",
        "global",
        "aiplatform.googleapis.com",
    )


def test_azure_deployment_and_region_header() -> None:
    path, header = rows("azure")
    assert (path["deployment"], path["region"], path["server_address"]) == (
        "gpt4o-eus2",
        "East US 2",
        "contoso-eus2.openai.azure.com",
    )
    assert path["provider_request_id"] == "apim-1"
    assert (header["deployment"], header["region"], header["provider"]) == (
        "gpt4o-swc",
        "Sweden Central",
        "azure.ai.openai",
    )


def test_bad_input_quarantined_with_reasons_while_good_spans_land() -> None:
    spans = load_spans("bad")
    result = normalize(spans)
    reasons = {q.location: q.reason for q in result.quarantined}
    start, end = spans[0]["start_ns"], spans[0]["end_ns"]
    assert reasons == {
        "span 0": f"end before start (end {end}, start {start})",
        "span 1": "duration 3.1e+09 ms is absurd (> 24 h)",
        "span 2": "negative output tokens: -5",
        "span 3": "gen_ai.usage.input_tokens is not an integer: 'abc'",
        "span 4": "unknown status code 7",
        "span 5": "cache_read_tokens 900 > input_tokens 500",
        "span 7": "ttft 500.000 ms outside [0, duration 200.000 ms]",
    }
    assert result.quarantined[0].raw == spans[0]["raw"]()
    assert result.non_llm_skipped == 1
    (good,) = result.table.to_pylist()
    assert (good["input_tokens"], good["output_tokens"]) == (42, 7)  # digit string and integral float accepted


def test_empty_input_gives_empty_conforming_table() -> None:
    result = normalize([])
    assert result.table.num_rows == 0 and result.table.schema == LLM_CALLS_SCHEMA
    assert (result.quarantined, result.non_llm_skipped, result.conventions) == ([], 0, {})


def test_every_fixture_together_counts_conventions() -> None:
    spans = [span for name in NAMES for span in load_spans(name)]
    result = normalize(spans)
    expected: dict[str, int] = {}
    for name in NAMES:
        for key, value in run(name).conventions.items():
            expected[key] = expected.get(key, 0) + value
    assert result.conventions == expected
    assert set(expected) == set(SOURCE_CONVENTIONS)  # every convention is exercised by some fixture


def _minimal(attrs: dict[str, Any], resource: dict[str, Any] | None = None) -> SpanRecord:
    data = {
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
        "parent_span_id": None,
        "name": "chat m",
        "kind": 3,
        "start_ns": 1_763_000_000_000_000_000,
        "end_ns": 1_763_000_001_000_000_000,
        "attributes": {"gen_ai.operation.name": "chat", **attrs},
        "resource": resource or {},
        "scope": "t",
        "events": [],
        "status_code": 0,
        "status_message": "",
    }
    return dict(data, source="inline", location="span 0", raw=lambda: orjson.dumps(data))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"spanprism.prompt_key": "checkout/v7", "gen_ai.prompt.name": "ignored"}, "checkout/v7"),
        ({"traceloop.prompt.key": "triage", "traceloop.prompt.version": 2}, "triage@2"),
        ({"langfuse.observation.prompt.name": "faq"}, "faq"),
        ({"llm.prompt_template.version": "v9"}, "tpl@v9"),
        ({"gen_ai.request.model": "m"}, None),
    ],
)
def test_prompt_key_sources(attrs: dict[str, Any], expected: str | None) -> None:
    (row,) = normalize([_minimal(attrs)]).table.to_pylist()
    assert row["prompt_key"] == expected


def test_tenant_from_resource_and_http_error_status() -> None:
    span = _minimal({"http.response.status_code": 503}, resource={"service.name": "s", "tenant.id": "globex"})
    (row,) = normalize([span], tenant_attribute="tenant.id").table.to_pylist()
    assert (row["tenant"], row["status"], row["error_type"]) == ("globex", "error", "503")
    (untenanted,) = normalize([span]).table.to_pylist()
    assert untenanted["tenant"] is None
