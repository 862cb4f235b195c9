"""attribution.simulator.otlp.writer: round trips through the ingest pipeline.

Rows are written in every convention (with non-LLM siblings), ingested once with
``spanprism.ingest.pipeline.ingest_paths``, and the stored canonical rows compared with the originals on every field
that convention can carry. The structure of what the writer writes is in test_otlp_writer_structure.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from support.otlp_rows import rows_for

from spanprism.attribution.simulator.otlp.encoding import to_ns
from spanprism.attribution.simulator.otlp.writer import CONVENTIONS, write_export

EXACT_STREAMING = {"openinference", "openllmetry", "openllmetry_legacy", "openlit"}
CLIENT_TTFT = {"otel_semconv", "openinference", "openllmetry", "openllmetry_legacy", "openlit", "langfuse"}
ITL_CARRIED = {"openllmetry", "openllmetry_legacy", "openlit", "vllm"}
ENDPOINT = {"otel_semconv", "otel_semconv_legacy", "openllmetry", "openllmetry_legacy", "openlit"}
FULL_GENAI = {"otel_semconv", "otel_semconv_legacy", "openllmetry", "openllmetry_legacy", "openlit"}


def _expected_tokens(row: Mapping[str, Any], convention: str) -> dict[str, Any]:
    """Token columns as the convention can carry them (absent-means-zero where the emitter writes 0 or drops 0)."""
    inp, cr, cw = row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]
    if convention in ("otel_semconv_legacy", "vllm"):
        cr = cw = None  # no cache keys in those conventions
    elif inp is not None and (
        convention in ("openllmetry", "openlit") or (convention == "openinference" and row["provider"] == "anthropic")
    ):
        cr = cr or 0
        cw = (cw or 0) if convention != "openllmetry" else cw
    return {
        "input_tokens": inp,
        "output_tokens": row["output_tokens"],
        "cache_read_tokens": cr,
        "cache_write_tokens": cw,
        "uncached_input_tokens": inp - cr if inp is not None and cr is not None else None,
    }


def _expected_route(row: Mapping[str, Any], convention: str) -> dict[str, Any]:
    stream = row["streaming"]
    host_region = row["region"] if row["provider"] == "aws.bedrock" else None  # only Bedrock hosts name a region
    out: dict[str, Any] = {
        "server_address": row["server_address"] if convention in ENDPOINT else None,
        "region": row["region"] if convention == "otel_semconv" else host_region if convention in ENDPOINT else None,
        "deployment": row["deployment"] if convention.startswith("openllmetry") else None,
        "response_id": row["response_id"] if convention in FULL_GENAI else None,
        "finish_reason": row["finish_reason"] if convention in FULL_GENAI | {"openinference"} else None,
        "system_fingerprint": row["system_fingerprint"] if convention in ("otel_semconv", "openlit") else None,
        "session_id": row["session_id"] if convention in ("otel_semconv", "openinference", "langfuse") else None,
    }
    if convention in ("otel_semconv_legacy", "openllmetry", "openllmetry_legacy"):  # non-stream only (§8)
        out["system_fingerprint"] = None if stream else row["system_fingerprint"]
    if convention == "otel_semconv_legacy":
        out["finish_reason"] = None if stream else row["finish_reason"]
    return out


def expected(row: Mapping[str, Any], convention: str) -> dict[str, Any]:
    """The canonical values ingest must recover from ``row`` written in ``convention``."""
    vllm = convention == "vllm"
    out: dict[str, Any] = {
        "trace_id": row["trace_id"],
        "parent_span_id": row["parent_span_id"],
        "service": row["service"],
        "source_convention": convention,
        "status": "ok" if vllm else row["status"],
        "error_type": None if vllm else row["error_type"],
        "prompt_key": None if vllm else row["prompt_key"],
        "provider": "vllm" if vllm else None if convention == "langfuse" else row["provider"],
        "operation": None if convention in ("vllm", "langfuse") else row["operation"],
        "request_model": None if vllm else row["request_model"],
        "response_model": None if convention in ("vllm", "langfuse") else row["response_model"],
    }
    if convention == "langfuse":  # its OpenAI integration overwrites the request model with the response model
        out["request_model"] = row["response_model"] or row["request_model"]
    if vllm:
        out["queue_ms"] = row["queue_ms"]
        out["provider_request_id"] = row["provider_request_id"]
    return out | _expected_tokens(row, convention) | _expected_route(row, convention)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> tuple[dict[str, dict], dict[str, dict], Any, Any]:
    """All conventions' rows written to one export (with non-LLM siblings) and ingested once."""
    from spanprism.api.storage.connect import open_db
    from spanprism.ingest.pipeline import ingest_paths

    folder = tmp_path_factory.mktemp("roundtrip")
    originals = {row["span_id"]: row for seed, conv in enumerate(CONVENTIONS) for row in rows_for(conv, 100 + seed)}
    counts = write_export(folder / "calls.jsonl", originals.values(), extra_non_llm=0.4, spans_per_line=9, seed=5)
    con = open_db(folder / "spanprism.duckdb")
    try:
        summary = ingest_paths(con, [folder / "calls.jsonl"])
        table = con.sql("SELECT * FROM llm_calls").to_arrow_table()
    finally:
        con.close()
    stored = {row["span_id"]: row for row in table.to_pylist()}
    return originals, stored, summary, counts


def test_roundtrip_counts(ingested) -> None:
    originals, stored, summary, counts = ingested
    assert summary.spans_seen == counts.llm_spans + counts.non_llm_spans
    assert summary.non_llm_skipped == counts.non_llm_spans
    assert (summary.quarantined, summary.duplicates) == (0, 0)
    assert summary.calls_stored == len(originals) == len(stored)
    assert dict(summary.conventions) == {c: 16 for c in CONVENTIONS}


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_roundtrip_recovers_what_the_convention_carries(ingested, convention: str) -> None:
    originals, stored, _, _ = ingested
    mismatches = []
    for span_id, row in originals.items():
        if row["source_convention"] != convention:
            continue
        got = stored.get(span_id)
        if got is None:
            mismatches.append(f"not stored: quarantined ({row['provider']})")
            continue
        for column, want in expected(row, convention).items():
            if not _same(column, got[column], want):
                mismatches.append(f"{column}: expected {want!r}, got {got[column]!r} ({row['provider']})")
        assert to_ns(got["start_time"]) == to_ns(row["start_time"])
        assert got["duration_ms"] == pytest.approx(row["duration_ms"], abs=1e-3)
        mismatches += _timing_mismatches(row, got, convention)
    assert not mismatches, "\n".join(sorted(set(mismatches)))


def _same(column: str, got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return abs(got - want) < 1e-6
    if column == "error_type" and isinstance(got, str) and isinstance(want, str):
        return got.rsplit(".", 1)[-1] == want  # module-qualified class names (openai.RateLimitError) are fine
    return got == want


def _timing_mismatches(row: Mapping[str, Any], got: Mapping[str, Any], convention: str) -> list[str]:
    stream = row["streaming"]
    bad = []
    want_ttft = row["ttft_ms"] if (convention in CLIENT_TTFT and stream) or convention == "vllm" else None
    if convention == "openlit" and row["provider"] == "anthropic":  # headers → message_start: not read
        want_ttft = None
    ttft = got["ttft_ms"]
    if (want_ttft is None) != (ttft is None) or (want_ttft is not None and abs(ttft - want_ttft) > 1):
        bad.append(f"ttft_ms: expected {want_ttft!r}, got {got['ttft_ms']!r} (streaming={stream})")
    want_itl = row["itl_ms"] if convention in ITL_CARRIED and (stream or convention == "vllm") else None
    if want_itl is not None and (got["itl_ms"] is None or abs(got["itl_ms"] - want_itl) > 1):
        bad.append(f"itl_ms: expected {want_itl!r}, got {got['itl_ms']!r}")
    if convention in EXACT_STREAMING and got["streaming"] is not stream:
        bad.append(f"streaming: expected {stream!r}, got {got['streaming']!r}")
    elif got["streaming"] not in (None, stream) and not (convention == "otel_semconv" and not stream):
        bad.append(f"streaming: expected {stream!r} or None, got {got['streaming']!r}")
    return bad
