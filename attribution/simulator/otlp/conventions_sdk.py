"""Span builders for the vendor SDK conventions: OpenLLMetry (≥0.5 and ≤0.4), OpenLIT and Langfuse.

Split from :mod:`attribution.simulator.otlp.conventions` (OTel semconv, OpenInference, vLLM) only to keep files small;
the contract (a :data:`~spanprism.attribution.simulator.otlp.conventions.Builder`) and the helpers are shared.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import orjson

from spanprism.attribution.simulator.otlp.conventions import (
    CLIENT,
    CONTENT_CHARS,
    INTERNAL,
    OLD_SYSTEM,
    PROMPT_KEY_ATTR,
    STATUS_OK,
    SpanParts,
    _api_base,
    _chunk_events,
    _error,
    _exception_events,
    _genai_messages_json,
    _messages,
    _status,
    _tokens,
    _ttft_ms,
)
from spanprism.attribution.simulator.otlp.encoding import count, iso_utc, num

#: Share of Langfuse spans whose completion_start_time is JSON double-encoded (older SDKs did this).
LANGFUSE_DOUBLE_ENCODED = 0.3


def _span_name(row: Mapping[str, Any]) -> str:
    provider = row.get("provider") or "openai"
    vendor = {"azure.ai.openai": "openai", "aws.bedrock": "bedrock", "gcp.vertex_ai": "vertexai"}.get(
        provider, provider
    )
    return f"{vendor}.chat" if (row.get("operation") or "chat") == "chat" else f"{vendor}.completion"


def _traceloop_content(a: dict[str, Any], row: Mapping[str, Any], rng: random.Random) -> None:
    """``gen_ai.prompt.N.*`` / ``gen_ai.completion.0.*``: OpenLLMetry's default content capture."""
    sys_t, user_t, out_t = _messages(rng, CONTENT_CHARS)
    a["gen_ai.prompt.0.role"], a["gen_ai.prompt.0.content"] = "system", sys_t
    a["gen_ai.prompt.1.role"], a["gen_ai.prompt.1.content"] = "user", user_t
    a["gen_ai.completion.0.role"], a["gen_ai.completion.0.content"] = "assistant", out_t
    a["gen_ai.completion.0.finish_reason"] = row.get("finish_reason")


def _traceloop_status(row: Mapping[str, Any]) -> dict[str, Any]:
    """OpenLLMetry leaves a successful non-stream span UNSET and sets OK at the end of a stream (§8)."""
    return _status(row, STATUS_OK if row.get("streaming") is True else 0)


def openllmetry(row: Mapping[str, Any], start_ns: int, end_ns: int, rng: random.Random, content: bool) -> SpanParts:
    """OpenLLMetry ≥ 0.5 (``gen_ai.*`` keys, ``gen_ai.content.completion.chunk`` events)."""
    streaming = row.get("streaming") is True
    inp, cr, cw, out, rsn = _tokens(row)
    fr = row.get("finish_reason")
    a: dict[str, Any] = {
        "gen_ai.provider.name": row.get("provider"),
        "gen_ai.operation.name": row.get("operation") or "chat",
        "gen_ai.request.model": row.get("request_model"),
        "gen_ai.response.model": row.get("response_model"),
        "gen_ai.response.id": row.get("response_id"),
        "gen_ai.openai.api_base": _api_base(row),
        "gen_ai.is_streaming": streaming,
        "gen_ai.usage.input_tokens": inp,
        "gen_ai.usage.output_tokens": out,
        "gen_ai.usage.total_tokens": inp + out if inp is not None and out is not None else None,
        # The openai package reports cache reads as 0 when there were none (§8).
        "gen_ai.usage.cache_read.input_tokens": (cr or 0) if inp is not None else None,
        "gen_ai.usage.cache_creation.input_tokens": cw,
        "gen_ai.usage.reasoning_tokens": rsn,
        "gen_ai.response.finish_reason": fr,
        "gen_ai.response.finish_reasons": [fr] if fr else None,
        "gen_ai.openai.response.system_fingerprint": None if streaming else row.get("system_fingerprint"),
    }
    return _traceloop_parts(a, row, start_ns, end_ns, rng, content, "gen_ai.content.completion.chunk")


def openllmetry_legacy(
    row: Mapping[str, Any], start_ns: int, end_ns: int, rng: random.Random, content: bool
) -> SpanParts:
    """OpenLLMetry ≤ 0.4 (``llm.*`` keys, ``gen_ai.usage.prompt_tokens``, ``llm.content.completion.chunk``)."""
    provider, streaming = row.get("provider"), row.get("streaming") is True
    # Already inclusive: even the ≤0.4 Anthropic package set prompt_tokens = input + cache_read + cache_creation.
    inp, cr, cw, out, rsn = _tokens(row)
    op = row.get("operation") or "chat"
    a: dict[str, Any] = {
        "gen_ai.system": OLD_SYSTEM.get(provider, provider),
        "llm.request.type": "chat" if op == "chat" else "completion",
        "gen_ai.request.model": row.get("request_model"),
        "gen_ai.response.model": row.get("response_model"),
        "gen_ai.response.id": row.get("response_id"),
        "gen_ai.openai.api_base": _api_base(row),
        "llm.is_streaming": streaming,
        "gen_ai.usage.prompt_tokens": inp,
        "gen_ai.usage.completion_tokens": out,
        "llm.usage.total_tokens": inp + out if inp is not None and out is not None else None,
        "gen_ai.usage.cache_read_input_tokens": cr,
        "gen_ai.usage.cache_creation_input_tokens": cw,
        "llm.usage.reasoning_tokens": rsn,
        "llm.response.finish_reason": row.get("finish_reason"),
        "gen_ai.openai.system_fingerprint": None if streaming else row.get("system_fingerprint"),
    }
    return _traceloop_parts(a, row, start_ns, end_ns, rng, content, "llm.content.completion.chunk")


def _traceloop_parts(a: dict[str, Any], row: Mapping[str, Any], start_ns: int, end_ns: int, rng: random.Random,
                     content: bool, chunk_event: str) -> SpanParts:  # fmt: skip
    """What both OpenLLMetry generations share: association properties, error type, prompt key, content, events."""
    a.update(
        {
            "traceloop.association.properties.user_id": row.get("tenant"),
            "traceloop.association.properties.session_id": row.get("session_id"),
            "error.type": (row.get("error_type") or "Error") if _error(row) else None,
            PROMPT_KEY_ATTR: row.get("prompt_key"),
        }
    )
    if content:
        _traceloop_content(a, row, rng)
    events = _chunk_events(row, start_ns, chunk_event, rng) + _exception_events(row, end_ns)
    return SpanParts(_span_name(row), CLIENT, a, events, _traceloop_status(row))


#: What OpenLIT's Anthropic stream wrapper records as TTFT: response headers → ``message_start``, which the API sends
#: with the headers (0.4 ms measured against the fake provider, tests/test_instrumented_openlit.py).
OPENLIT_ANTHROPIC_STREAM_TTFT_S = 0.0004


def _openlit_timing(row: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(TTFT s, TBT s) as OpenLIT sets them; for a non-streaming call TTFT = duration and TBT = 0 (the trap); for an
    Anthropic stream, the time from the headers to the first event (its clock starts when the stream is returned)."""
    if _error(row):  # OpenLIT's exception path records the exception only
        return None, None
    if row.get("streaming") is True:
        ttft, itl = _ttft_ms(row), num(row.get("itl_ms"))
        if row.get("provider") == "anthropic":
            return OPENLIT_ANTHROPIC_STREAM_TTFT_S, (itl / 1000.0 if itl is not None else None)
        return (ttft / 1000.0 if ttft is not None else None), (itl / 1000.0 if itl is not None else None)
    duration = num(row.get("duration_ms"))
    return (duration / 1000.0 if duration is not None else None), 0.0


def openlit(row: Mapping[str, Any], start_ns: int, end_ns: int, rng: random.Random, content: bool) -> SpanParts:
    """OpenLIT SDK spans (``common_span_attributes`` + per-provider token attributes)."""
    provider, op, model = row.get("provider"), row.get("operation") or "chat", row.get("request_model")
    # openlit/instrumentation/anthropic/utils.py: "input_tokens exclusive of cache read / creation tokens".
    inp, cr, cw, out, rsn = _tokens(row, exclusive=provider == "anthropic")
    ttft_s, tbt_s = _openlit_timing(row)
    fr = row.get("finish_reason")
    a: dict[str, Any] = {
        "telemetry.sdk.name": "openlit",
        "gen_ai.operation.name": op,
        "gen_ai.provider.name": provider,
        "server.address": row.get("server_address"),
        "server.port": count(row.get("server_port")),
        "gen_ai.request.model": model,
        "gen_ai.response.model": row.get("response_model"),
        "deployment.environment": "production",
        "service.name": row.get("service"),
        "gen_ai.request.stream": row.get("streaming") is True,
        "gen_ai.server.time_to_first_token": ttft_s,
        "gen_ai.server.time_per_output_token": tbt_s,
        "gen_ai.sdk.version": "1.36.2",
        "gen_ai.response.id": row.get("response_id"),
        "gen_ai.response.finish_reasons": [fr] if fr else None,
        "gen_ai.usage.input_tokens": inp,
        "gen_ai.usage.output_tokens": out,
        # OpenLIT sets the cache counts even when they are 0.
        "gen_ai.usage.cache_read.input_tokens": (cr or 0) if inp is not None else None,
        "gen_ai.usage.cache_creation.input_tokens": (cw or 0) if inp is not None else None,
        "gen_ai.usage.reasoning.output_tokens": rsn,
        "openai.response.system_fingerprint": row.get("system_fingerprint"),
        "error.type": (row.get("error_type") or "Error") if _error(row) else None,
        PROMPT_KEY_ATTR: row.get("prompt_key"),
    }
    if content:
        a["gen_ai.input.messages"], a["gen_ai.output.messages"] = _genai_messages_json(rng, CONTENT_CHARS, fr)
    events = _exception_events(row, end_ns)
    return SpanParts(f"{op} {model}" if model else op, CLIENT, a, events, _status(row, STATUS_OK))


def _langfuse_usage(row: Mapping[str, Any]) -> str | None:
    """``usage_details``: the provider's raw usage object, as Langfuse's integrations pass it through."""
    provider = row.get("provider")
    if provider == "anthropic":
        inp, cr, cw, out, _ = _tokens(row, exclusive=True)
        raw: dict[str, Any] = {
            "input_tokens": inp,
            "output_tokens": out,
            "cache_read_input_tokens": cr,
            "cache_creation_input_tokens": cw,
        }
    elif provider == "aws.bedrock":  # Converse usage; counted without cache like Anthropic (§5, UNCONFIRMED)
        inp, cr, cw, out, _ = _tokens(row, exclusive=True)
        raw = {"inputTokens": inp, "outputTokens": out, "cacheReadInputTokens": cr, "cacheWriteInputTokens": cw}
    else:
        inp, cr, _, out, rsn = _tokens(row)
        raw = {
            "prompt_tokens": inp,
            "completion_tokens": out,
            "total_tokens": inp + out if inp is not None and out is not None else None,
        }
        if cr is not None:
            raw["prompt_tokens_details"] = {"cached_tokens": cr}
        if rsn is not None:
            raw["completion_tokens_details"] = {"reasoning_tokens": rsn}
    raw = {k: v for k, v in raw.items() if v is not None}
    return orjson.dumps(raw).decode() if raw else None


def langfuse(row: Mapping[str, Any], start_ns: int, end_ns: int, rng: random.Random, content: bool) -> SpanParts:
    """Langfuse SDK v3 generation span (its OpenAI integration): the response model replaces the request model."""
    ttft = _ttft_ms(row) if row.get("streaming") is True else None
    started = None
    if ttft is not None:
        started = iso_utc(start_ns + round(ttft * 1e6))
        if rng.random() < LANGFUSE_DOUBLE_ENCODED:
            started = orjson.dumps(started).decode()
    a: dict[str, Any] = {
        "langfuse.observation.type": "generation",
        "langfuse.observation.model.name": row.get("response_model") or row.get("request_model"),
        "langfuse.observation.model.parameters": '{"temperature": 0.2, "max_tokens": 1024}',
        "langfuse.observation.usage_details": _langfuse_usage(row),
        "langfuse.observation.completion_start_time": started,
        "langfuse.observation.level": "ERROR" if _error(row) else None,
        "langfuse.observation.status_message": row.get("error_type") if _error(row) else None,
        "user.id": row.get("tenant"),
        "session.id": row.get("session_id"),
        PROMPT_KEY_ATTR: row.get("prompt_key"),
    }
    if content:
        sys_t, user_t, out_t = _messages(rng, CONTENT_CHARS)
        a["langfuse.observation.input"] = orjson.dumps(
            [{"role": "system", "content": sys_t}, {"role": "user", "content": user_t}]
        ).decode()
        a["langfuse.observation.output"] = orjson.dumps({"role": "assistant", "content": out_t}).decode()
    name = "Anthropic-generation" if row.get("provider") == "anthropic" else "OpenAI-generation"
    return SpanParts(name, INTERNAL, a, _exception_events(row, end_ns), _status(row))
