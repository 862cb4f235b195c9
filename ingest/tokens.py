"""Token counts: span attributes first, then raw provider usage payloads, all made inclusive of cache.

``input_tokens`` is ALWAYS the whole prompt (DESIGN.md). Attribute keys (OTel, OpenInference, OpenLLMetry,
OpenLIT) already count inclusively. Raw payloads are inspected by shape:

* OpenAI Chat / Responses (``prompt_tokens``/``input_tokens`` + ``*_tokens_details.cached_tokens``): inclusive.
* Anthropic (``input_tokens`` with ``cache_read_input_tokens``/``cache_creation_input_tokens``/``cache_creation``):
  **exclusive**, so input = input + cache read + cache creation (OTel anthropic.md).
* Bedrock Converse (``inputTokens``/``cacheReadInputTokens``/``cacheWriteInputTokens``): treated as **exclusive**
  like Anthropic (CONVENTIONS.md §5: UNCONFIRMED by AWS, third-party code does the same).
* Gemini (``promptTokenCount``/``cachedContentTokenCount``): inclusive; output = candidates + thoughts, because
  ``candidatesTokenCount`` excludes thinking while our ``output_tokens`` includes reasoning.

A missing cache key means *unknown* (NULL), not zero; an explicit 0 stays 0. One exception: OpenInference's
Anthropic instrumentation sets cache keys only when non-zero (§2), so there absence means 0.
``uncached_input_tokens`` = input − cache read (cache writes are prefilled, so they count as uncached); NULL when
either is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from spanprism.ingest.coerce import Rejected, json_object, token_count

INPUT_KEYS: tuple[str, ...] = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
OUTPUT_KEYS: tuple[str, ...] = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
)
CACHE_READ_KEYS: tuple[str, ...] = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
    "gen_ai.usage.prompt_tokens_details.cached_tokens",
    "gen_ai.usage.cached_tokens",  # vLLM forks (UNCONFIRMED upstream, §4)
)
CACHE_WRITE_KEYS: tuple[str, ...] = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",  # the Anthropic SDK's own telemetry (CONVENTIONS.md, emitters)
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
#: The Anthropic SDK's cache writes split by TTL; their sum is the cache write when no total key is present.
CACHE_WRITE_TTL_KEYS: tuple[str, ...] = (
    "anthropic.usage.cache_creation.ephemeral_5m_input_tokens",
    "anthropic.usage.cache_creation.ephemeral_1h_input_tokens",
)
REASONING_KEYS: tuple[str, ...] = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
)
_ATTRIBUTE_FIELDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (INPUT_KEYS, "input"),
    (OUTPUT_KEYS, "output"),
    (CACHE_READ_KEYS, "cache_read"),
    (CACHE_WRITE_KEYS, "cache_write"),
    (REASONING_KEYS, "reasoning"),
)
#: Attributes holding a provider usage object (or a whole response with ``usage``/``usageMetadata``).
RAW_USAGE_KEYS: tuple[str, ...] = ("gen_ai.usage.raw", "langfuse.observation.usage_details")


class Tokens(NamedTuple):
    """Canonical token counts of one call (None = unknown)."""

    input: int | None
    output: int | None
    cache_read: int | None
    cache_write: int | None
    reasoning: int | None
    uncached: int | None
    from_raw: bool
    response_id: str | None


class _Raw(NamedTuple):
    """Counts parsed from a raw usage payload, before the inclusive adjustment."""

    input: int | None
    output: int | None
    cache_read: int | None
    cache_write: int | None
    reasoning: int | None
    exclusive: bool
    response_id: str | None


def _pick(body: Mapping[str, Any], prefix: str, keys: tuple[str, ...], what: str) -> int | None:
    """First present of ``keys`` in a raw payload; the quarantine reason names ``prefix.key``."""
    for key in keys:
        value = body.get(key)
        if value is not None:
            return token_count(f"{prefix}.{key}", value, what)
    return None


def _nested(body: Mapping[str, Any], outer: tuple[str, ...], inner: str, prefix: str, what: str) -> int | None:
    for key in outer:
        details = body.get(key)
        if isinstance(details, dict) and details.get(inner) is not None:
            return token_count(f"{prefix}.{key}.{inner}", details[inner], what)
    return None


def _gemini(body: Mapping[str, Any], prefix: str) -> _Raw:
    candidates = _pick(body, prefix, ("candidatesTokenCount",), "output")
    thoughts = _pick(body, prefix, ("thoughtsTokenCount",), "reasoning")
    output = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    cache = _pick(body, prefix, ("cachedContentTokenCount",), "cache_read")
    return _Raw(_pick(body, prefix, ("promptTokenCount",), "input"), output, cache, None, thoughts, False, None)


def _bedrock(body: Mapping[str, Any], prefix: str) -> _Raw:
    return _Raw(
        _pick(body, prefix, ("inputTokens",), "input"),
        _pick(body, prefix, ("outputTokens",), "output"),
        _pick(body, prefix, ("cacheReadInputTokens",), "cache_read"),
        _pick(body, prefix, ("cacheWriteInputTokens",), "cache_write"),
        None,
        True,
        None,
    )


def _openai_or_anthropic(body: Mapping[str, Any], prefix: str) -> _Raw:
    details = ("prompt_tokens_details", "input_tokens_details")
    cache_read = _nested(body, details, "cached_tokens", prefix, "cache_read")
    if cache_read is None:
        cache_read = _pick(body, prefix, ("cache_read_input_tokens",), "cache_read")
    cache_write = _nested(body, details, "cache_write_tokens", prefix, "cache_write")
    if cache_write is None:
        cache_write = _pick(body, prefix, ("cache_creation_input_tokens",), "cache_write")
    split = body.get("cache_creation")
    if cache_write is None and isinstance(split, dict):
        parts = [_pick(split, f"{prefix}.cache_creation", (k,), "cache_write") for k in split if k.endswith("_tokens")]
        cache_write = sum(p for p in parts if p is not None) if parts else None
    exclusive = "cache_read_input_tokens" in body or "cache_creation_input_tokens" in body or isinstance(split, dict)
    reasoning = _nested(
        body, ("completion_tokens_details", "output_tokens_details"), "reasoning_tokens", prefix, "reasoning"
    )
    return _Raw(
        _pick(body, prefix, ("prompt_tokens", "input_tokens", "input"), "input"),
        _pick(body, prefix, ("completion_tokens", "output_tokens", "output"), "output"),
        cache_read,
        cache_write,
        reasoning,
        exclusive,
        None,
    )


def parse_raw_usage(key: str, payload: dict[str, Any]) -> _Raw:
    """Counts from one raw payload (usage object, or a response object wrapping one)."""
    response_id = payload.get("id") or payload.get("responseId")
    body: Mapping[str, Any] = payload
    for wrapper in ("usage", "usageMetadata"):
        inner = payload.get(wrapper)
        if isinstance(inner, dict):
            body, key = inner, f"{key}.{wrapper}"
            break
    if "promptTokenCount" in body or "candidatesTokenCount" in body:
        raw = _gemini(body, key)
    elif "inputTokens" in body or "outputTokens" in body:
        raw = _bedrock(body, key)
    else:
        raw = _openai_or_anthropic(body, key)
    return raw._replace(response_id=response_id if isinstance(response_id, str) else None)


def _raw_payload(attrs: Mapping[str, Any]) -> _Raw | None:
    for key in RAW_USAGE_KEYS:
        value = attrs.get(key)
        if value is not None:
            payload = json_object(value)
            if payload is not None:
                return parse_raw_usage(key, payload)
    return None


def extract_tokens(
    attrs: Mapping[str, Any], *, absent_cache_is_zero: bool = False, exclusive_input: bool = False
) -> Tokens:
    """Canonical counts: attributes first (first present wins), a raw payload fills what they lack.

    ``exclusive_input`` says the input attribute excludes cache reads and writes (OpenLIT's Anthropic
    instrumentation copies Anthropic's raw ``usage.input_tokens``), so they are added back.
    """
    counts: list[int | None] = []
    for keys, what in _ATTRIBUTE_FIELDS:
        found = None
        for key in keys:
            value = attrs.get(key)
            if value is not None:
                # Plain non-negative ints are the norm: accept them without a call (hot path).
                found = value if type(value) is int and value >= 0 else token_count(key, value, what)
                break
        counts.append(found)
    inp, out, read, write, reasoning = counts
    if write is None:
        write = _ttl_cache_write(attrs)
    if exclusive_input and inp is not None:
        inp += (read or 0) + (write or 0)
    from_raw = False
    response_id = None
    if inp is None or out is None or read is None:
        raw = _raw_payload(attrs)
        if raw is not None:
            response_id = raw.response_id
            if inp is None and raw.input is not None:
                inp = raw.input + (raw.cache_read or 0) + (raw.cache_write or 0) if raw.exclusive else raw.input
                from_raw = True
            out = out if out is not None else raw.output
            read = read if read is not None else raw.cache_read
            write = write if write is not None else raw.cache_write
            reasoning = reasoning if reasoning is not None else raw.reasoning
    if absent_cache_is_zero and inp is not None:
        read = 0 if read is None else read
        write = 0 if write is None else write
    _check_consistency(inp, out, read, write, reasoning)
    uncached = inp - read if inp is not None and read is not None else None
    return Tokens(inp, out, read, write, reasoning, uncached, from_raw, response_id)


def _ttl_cache_write(attrs: Mapping[str, Any]) -> int | None:
    """Sum of the per-TTL cache-write keys present; None when none is."""
    total = None
    for key in CACHE_WRITE_TTL_KEYS:
        value = attrs.get(key)
        if value is not None:
            total = (total or 0) + token_count(key, value, "cache_write")
    return total


def _check_consistency(
    inp: int | None, out: int | None, read: int | None, write: int | None, reasoning: int | None
) -> None:
    """Subsets must not exceed their whole: cached ⊆ input, reasoning ⊆ output."""
    if inp is not None:
        if read is not None and read > inp:
            raise Rejected(f"cache_read_tokens {read} > input_tokens {inp}")
        if write is not None and write > inp:
            raise Rejected(f"cache_write_tokens {write} > input_tokens {inp}")
        if read is not None and write is not None and read + write > inp:
            raise Rejected(f"cache_read_tokens {read} + cache_write_tokens {write} > input_tokens {inp}")
    if out is not None and reasoning is not None and reasoning > out:
        raise Rejected(f"reasoning_tokens {reasoning} > output_tokens {out}")
