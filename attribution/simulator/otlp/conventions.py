"""Per-convention span builders: how each instrumentation really records one canonical LLM call.

Each builder turns a canonical ``llm_calls`` row (models/schema.py) into :class:`SpanParts` — name, kind,
attributes, events, status — following CONVENTIONS.md §1–§4 and §8, traps included:

* ``otel_semconv``: current GenAI keys (v1.41), TTFT as ``gen_ai.response.time_to_first_chunk`` in seconds.
* ``otel_semconv_legacy``: ``gen_ai.system`` with old values, prompt/completion tokens, no cache keys, no
  stream flag; openai-v2's literal ``<class 'openai.X'>`` error type; fingerprint/finish only when not streaming.
* ``openinference``: ``llm.*`` keys, the request model only inside ``llm.invocation_parameters``, a
  ``First Token Stream Event``; the Anthropic instrumentation drops zero cache counts.
* ``openllmetry`` (≥0.5) / ``openllmetry_legacy`` (≤0.4): one chunk event per output token, full base URL in
  ``gen_ai.openai.api_base``; both generations count Anthropic input tokens inclusive of cache.
* ``openlit``: TTFT/TBT attributes — for non-streaming calls TTFT = duration and TBT = 0 (its real trap); its
  Anthropic instrumentation also reports raw, cache-exclusive input tokens (openlit ``anthropic/utils.py``) and, on
  streams, headers → first event as TTFT (~0.4 ms; normalize does not read it).
* ``langfuse``: Langfuse SDK generation span: ISO ``completion_start_time`` (sometimes JSON double-encoded, as
  older SDKs did), raw provider usage JSON in ``langfuse.observation.usage_details``, no provider, no endpoint.
* ``vllm``: the server-side ``llm_request`` span with ``gen_ai.latency.*`` seconds, no model, no status.

``spanprism.prompt_key`` is our own extension (an application sets it next to its instrumentation); no
library defines a prompt-version key except OpenInference's ``llm.prompt_template.version``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from spanprism.attribution.simulator.otlp.encoding import (
    chunk_gaps_ms,
    chunk_times_ns,
    count,
    filler,
    kv_list,
    num,
)

INTERNAL, SERVER, CLIENT = 1, 2, 3
STATUS_OK, STATUS_ERROR = 1, 2
PROMPT_KEY_ATTR = "spanprism.prompt_key"
#: Characters of message content per span with ``with_content`` (≈ 2 KB spans once encoded).
CONTENT_CHARS = 900

#: Current → pre-1.37 ``gen_ai.system`` values (CONVENTIONS §1 deprecated keys).
OLD_SYSTEM = {
    "azure.ai.openai": "az.ai.openai",
    "azure.ai.inference": "az.ai.inference",
    "gcp.vertex_ai": "vertex_ai",
    "gcp.gemini": "gemini",
    "x_ai": "xai",
}
#: Current provider → OpenInference ``llm.provider`` (hosting) value.
OI_PROVIDER = {
    "openai": "openai",
    "azure.ai.openai": "azure",
    "anthropic": "anthropic",
    "aws.bedrock": "aws",
    "gcp.vertex_ai": "google",
    "gcp.gemini": "google",
    "mistral_ai": "mistralai",
    "cohere": "cohere",
    "x_ai": "xai",
    "deepseek": "deepseek",
    "groq": "groq",
}


@dataclass(slots=True)
class SpanParts:
    """Everything convention-specific about one span; ids and times are added by the writer."""

    name: str
    kind: int
    attrs: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[Mapping[str, Any], int, int, random.Random, bool], SpanParts]


# --- shared helpers --------------------------------------------------------------------------------------------


def _tokens(row: Mapping[str, Any], *, exclusive: bool = False) -> tuple[int | None, ...]:
    """(input, cache_read, cache_write, output, reasoning); ``exclusive`` = Anthropic raw input counting."""
    inp, cr = count(row.get("input_tokens")), count(row.get("cache_read_tokens"))
    cw = count(row.get("cache_write_tokens"))
    if exclusive and inp is not None:
        inp = max(0, inp - (cr or 0) - (cw or 0))
    return inp, cr, cw, count(row.get("output_tokens")), count(row.get("reasoning_tokens"))


def _ttft_ms(row: Mapping[str, Any]) -> float | None:
    """Client TTFT exists only for streaming calls (never faked for non-streaming ones)."""
    return num(row.get("ttft_ms")) if row.get("streaming") is not False else None


def _error(row: Mapping[str, Any]) -> bool:
    return row.get("status") == "error"


def _status(row: Mapping[str, Any], ok_code: int = 0) -> dict[str, Any]:
    if _error(row):
        return {"code": STATUS_ERROR, "message": f"{row.get('error_type') or 'Error'}: request failed"}
    return {"code": ok_code} if ok_code else {}


def _exception_events(row: Mapping[str, Any], end_ns: int) -> list[dict[str, Any]]:
    if not _error(row):
        return []
    attrs = {
        "exception.type": row.get("error_type") or "Error",
        "exception.message": "request failed",
        "exception.escaped": "False",
    }
    return [{"timeUnixNano": str(end_ns), "name": "exception", "attributes": kv_list(attrs)}]


def _event(name: str, at_ns: int) -> dict[str, Any]:
    return {"timeUnixNano": str(at_ns), "name": name}


def _chunk_events(row: Mapping[str, Any], start_ns: int, name: str, rng: random.Random) -> list[dict[str, Any]]:
    """One event per output chunk: first at start + TTFT, gaps with mean ``itl_ms`` and p95 ≈ ``itl_p95_ms``."""
    ttft = _ttft_ms(row)
    if ttft is None or row.get("streaming") is not True:
        return []
    chunks = count(row.get("output_tokens")) or count(row.get("chunk_count")) or 1
    mean = num(row.get("itl_ms"))
    if mean is None and chunks > 1:
        decode = num(row.get("decode_ms"))
        if decode is None and num(row.get("duration_ms")) is not None:
            decode = num(row.get("duration_ms")) - ttft
        mean = max(0.0, decode or 0.0) / (chunks - 1)
    gaps = chunk_gaps_ms(chunks - 1, mean or 0.0, num(row.get("itl_p95_ms")), rng)
    tail = f'","name":"{name}"}}'
    # Built as JSON text once and parsed back: ~3× faster than a dict literal per event for long streams.
    times = chunk_times_ns(start_ns, ttft, gaps)
    return orjson.loads("[" + ",".join('{"timeUnixNano":"' + str(t) + tail for t in times) + "]")


def _api_base(row: Mapping[str, Any]) -> str | None:
    """OpenLLMetry's ``gen_ai.openai.api_base``: the client's full base URL (Azure carries the deployment)."""
    host = row.get("server_address")
    if not host:
        return None
    port = row.get("server_port")
    netloc = f"{host}:{port}" if port and int(port) != 443 else host
    provider = row.get("provider")
    if provider == "azure.ai.openai":
        dep = row.get("deployment")
        return f"https://{netloc}/openai/deployments/{dep}/" if dep else f"https://{netloc}/openai/"
    return f"https://{netloc}/v1/" if provider in ("openai", None) or "openai" in str(host) else f"https://{netloc}"


def _messages(rng: random.Random, chars: int) -> tuple[str, str, str]:
    """(system, user, assistant) texts totalling about ``chars`` characters."""
    return filler(chars // 5, rng), filler(chars * 2 // 5, rng), filler(chars * 2 // 5, rng)


def _genai_messages_json(rng: random.Random, chars: int, finish: str | None) -> tuple[str, str]:
    """Current semconv ``gen_ai.input.messages`` / ``gen_ai.output.messages`` JSON strings."""
    sys_t, user_t, out_t = _messages(rng, chars)
    inp = [
        {"role": "system", "parts": [{"type": "text", "content": sys_t}]},
        {"role": "user", "parts": [{"type": "text", "content": user_t}]},
    ]
    out = [{"role": "assistant", "parts": [{"type": "text", "content": out_t}], "finish_reason": finish or "stop"}]
    return orjson.dumps(inp).decode(), orjson.dumps(out).decode()


# --- OTel GenAI semantic conventions ---------------------------------------------------------------------------


def otel_semconv(row: Mapping[str, Any], start_ns: int, end_ns: int, rng: random.Random, content: bool) -> SpanParts:
    """Current GenAI semconv (v1.41 keys; opt-in ``gen_ai_latest_experimental`` emitters)."""
    op, model, streaming = row.get("operation") or "chat", row.get("request_model"), row.get("streaming") is True
    inp, cr, cw, out, rsn = _tokens(row)
    ttft = _ttft_ms(row) if streaming else None
    fr = row.get("finish_reason")
    a: dict[str, Any] = {
        "gen_ai.operation.name": op,
        "gen_ai.provider.name": row.get("provider"),
        "gen_ai.request.model": model,
        "gen_ai.request.stream": True if streaming else None,
        "gen_ai.response.model": row.get("response_model"),
        "gen_ai.response.id": row.get("response_id"),
        "gen_ai.response.finish_reasons": [fr] if fr else None,
        "gen_ai.usage.input_tokens": inp,
        "gen_ai.usage.output_tokens": out,
        "gen_ai.usage.cache_read.input_tokens": cr,
        "gen_ai.usage.cache_creation.input_tokens": cw,
        "gen_ai.usage.reasoning.output_tokens": rsn,
        "gen_ai.response.time_to_first_chunk": ttft / 1000.0 if ttft is not None else None,
        "server.address": row.get("server_address"),
        "server.port": count(row.get("server_port")),
        "cloud.region": row.get("region"),
        "openai.response.system_fingerprint": row.get("system_fingerprint"),
        "gen_ai.conversation.id": row.get("session_id"),
        "user.id": row.get("tenant"),
        "aws.request_id": row.get("provider_request_id") if row.get("provider") == "aws.bedrock" else None,
        "error.type": (row.get("error_type") or "Error") if _error(row) else None,
        PROMPT_KEY_ATTR: row.get("prompt_key"),
    }
    if content:
        a["gen_ai.input.messages"], a["gen_ai.output.messages"] = _genai_messages_json(rng, CONTENT_CHARS, fr)
    return SpanParts(f"{op} {model}" if model else op, CLIENT, a, [], _status(row))


def otel_semconv_legacy(
    row: Mapping[str, Any], start_ns: int, end_ns: int, rng: random.Random, content: bool
) -> SpanParts:
    """Pre-1.37 semconv as openai-v2 / botocore emit it by default (CONVENTIONS §1 and §8)."""
    op, model, provider = row.get("operation") or "chat", row.get("request_model"), row.get("provider")
    streaming = row.get("streaming") is True
    inp, _, _, out, _ = _tokens(row)
    fr, err = row.get("finish_reason"), row.get("error_type") or "Error"
    openai_like = provider in ("openai", "azure.ai.openai")
    a: dict[str, Any] = {
        "gen_ai.operation.name": op,
        "gen_ai.system": OLD_SYSTEM.get(provider, provider),
        "gen_ai.request.model": model,
        "gen_ai.response.model": row.get("response_model"),
        "gen_ai.response.id": row.get("response_id"),
        "gen_ai.response.finish_reasons": [fr] if fr and not streaming else None,
        "gen_ai.usage.prompt_tokens": inp,
        "gen_ai.usage.completion_tokens": out,
        "gen_ai.openai.response.system_fingerprint": None if streaming else row.get("system_fingerprint"),
        "server.address": row.get("server_address"),
        "server.port": count(row.get("server_port")),
        "cloud.region": row.get("region") if provider == "aws.bedrock" else None,
        "aws.request_id": row.get("provider_request_id") if provider == "aws.bedrock" else None,
        "error.type": (f"<class 'openai.{err}'>" if openai_like else err) if _error(row) else None,
        PROMPT_KEY_ATTR: row.get("prompt_key"),
    }
    events: list[dict[str, Any]] = []
    if content:  # v1.26-era content events
        sys_t, user_t, out_t = _messages(rng, CONTENT_CHARS)
        prompt = orjson.dumps([{"role": "system", "content": sys_t}, {"role": "user", "content": user_t}]).decode()
        completion = orjson.dumps([{"role": "assistant", "content": out_t}]).decode()
        events = [
            {
                "timeUnixNano": str(start_ns),
                "name": "gen_ai.content.prompt",
                "attributes": kv_list({"gen_ai.prompt": prompt}),
            },
            {
                "timeUnixNano": str(end_ns),
                "name": "gen_ai.content.completion",
                "attributes": kv_list({"gen_ai.completion": completion}),
            },
        ]
    return SpanParts(f"{op} {model}" if model else op, CLIENT, a, events, _status(row))


# --- OpenInference ---------------------------------------------------------------------------------------------


def _oi_system(row: Mapping[str, Any]) -> str | None:
    """``llm.system`` is the model vendor (Claude on Bedrock is still ``anthropic``)."""
    provider, model = row.get("provider"), str(row.get("request_model") or "")
    if provider in ("openai", "azure.ai.openai"):
        return "openai"
    if provider == "anthropic" or "claude" in model:
        return "anthropic"
    return {"gcp.vertex_ai": "vertexai", "gcp.gemini": "vertexai", "mistral_ai": "mistralai", "cohere": "cohere"}.get(
        provider or ""
    )


def _oi_content(a: dict[str, Any], row: Mapping[str, Any], rng: random.Random) -> None:
    """Messages the way openinference-instrumentation-openai records them by default (plus input/output.value)."""
    sys_t, user_t, out_t = _messages(rng, CONTENT_CHARS // 2)  # each text appears twice (messages + *.value)
    a["llm.input_messages.0.message.role"], a["llm.input_messages.0.message.content"] = "system", sys_t
    a["llm.input_messages.1.message.role"], a["llm.input_messages.1.message.content"] = "user", user_t
    a["llm.output_messages.0.message.role"], a["llm.output_messages.0.message.content"] = "assistant", out_t
    request = {
        "messages": [{"role": "system", "content": sys_t}, {"role": "user", "content": user_t}],
        "model": row.get("request_model"),
    }
    a["input.value"], a["input.mime_type"] = orjson.dumps(request).decode(), "application/json"
    a["output.value"], a["output.mime_type"] = out_t, "text/plain"


def openinference(row: Mapping[str, Any], start_ns: int, end_ns: int, rng: random.Random, content: bool) -> SpanParts:
    """openinference-instrumentation-openai/-anthropic (CONVENTIONS §2, §8)."""
    provider, req, resp = row.get("provider"), row.get("request_model"), row.get("response_model")
    streaming = row.get("streaming")
    inp, cr, cw, out, rsn = _tokens(row)
    if provider == "anthropic":  # the Anthropic instrumentation sets cache counts only when non-zero
        cr, cw = cr or None, cw or None
    params: dict[str, Any] = {"model": req} if req else {}
    if streaming is not None:
        params["stream"] = streaming
        if streaming:
            params["stream_options"] = {"include_usage": True}
    a: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "llm.system": _oi_system(row),
        "llm.provider": OI_PROVIDER.get(provider or ""),
        "llm.model_name": resp or req,
        "llm.request.model_name": req if resp and req and resp != req else None,
        "llm.response.model_name": resp if resp and req and resp != req else None,
        "llm.invocation_parameters": orjson.dumps(params).decode(),
        "llm.token_count.prompt": inp,
        "llm.token_count.completion": out,
        "llm.token_count.total": inp + out if inp is not None and out is not None else None,
        "llm.token_count.prompt_details.cache_read": cr,
        "llm.token_count.prompt_details.cache_write": cw,
        "llm.token_count.completion_details.reasoning": rsn,
        "llm.finish_reason": row.get("finish_reason"),
        "user.id": row.get("tenant"),
        "session.id": row.get("session_id"),
        "llm.prompt_template.version": row.get("prompt_key"),
        PROMPT_KEY_ATTR: row.get("prompt_key"),
    }
    if content:
        _oi_content(a, row, rng)
    ttft = _ttft_ms(row) if streaming else None
    events = [_event("First Token Stream Event", start_ns + round(ttft * 1e6))] if ttft is not None else []
    name = "Messages" if provider == "anthropic" else "ChatCompletion"
    return SpanParts(name, INTERNAL, a, events + _exception_events(row, end_ns), _status(row, STATUS_OK))


# --- vLLM server span ------------------------------------------------------------------------------------------


def vllm(row: Mapping[str, Any], start_ns: int, end_ns: int, rng: random.Random, content: bool) -> SpanParts:
    """vLLM 0.33 ``llm_request`` SERVER span: latencies in seconds, old token keys, no model/status (§4)."""
    inp, _, _, out, _ = _tokens(row)
    duration, ttft = num(row.get("duration_ms")) or 0.0, num(row.get("ttft_ms"))
    queue = num(row.get("queue_ms")) or 0.0
    itl = num(row.get("itl_ms"))
    if itl is not None and out and out > 1:
        decode: float | None = itl * (out - 1)  # vLLM's decode spans first → last token: ITL × (output − 1)
    else:
        decode = num(row.get("decode_ms"))
        if decode is None and ttft is not None:
            decode = max(0.0, duration - ttft)
    prefill = max(0.0, ttft - queue) if ttft is not None else None
    a: dict[str, Any] = {
        "gen_ai.request.id": row.get("provider_request_id") or row.get("response_id"),
        "gen_ai.request.max_tokens": 1024,
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.top_p": 0.95,
        "gen_ai.usage.prompt_tokens": inp,
        "gen_ai.usage.completion_tokens": out,
        "gen_ai.latency.time_in_queue": queue / 1000.0,
        "gen_ai.latency.time_to_first_token": ttft / 1000.0 if ttft is not None else None,
        "gen_ai.latency.e2e": duration / 1000.0,
        "gen_ai.latency.time_in_model_prefill": prefill / 1000.0 if prefill is not None else None,
        "gen_ai.latency.time_in_model_decode": decode / 1000.0 if decode is not None else None,
        "gen_ai.latency.time_in_model_inference": (prefill + decode) / 1000.0
        if prefill is not None and decode is not None
        else None,
    }
    return SpanParts("llm_request", SERVER, a, [], {})
