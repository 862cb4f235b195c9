"""The providers the workload simulator serves from: their request models, regions, prompt-cache rules and names.

A :class:`ProviderSpec` is how one provider serves, caches, names and fails; a :class:`ModelOption` one of its request
models; :func:`pick_model` chooses one that can host a family's requirements. Provider names follow the current
GenAI semconv values. Routes over these live in ``routes.py``, series profiles in ``catalog.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Services' operation: Vertex instrumentations name the call ``generate_content``, the others ``chat``.
OPERATION = {"gcp.vertex_ai": "generate_content"}


@dataclass(frozen=True)
class ModelOption:
    """A request model of a provider: speed key, response snapshots (first = current) and prompt-cache support."""

    request_model: str
    speed: str
    snapshots: tuple[str, ...]
    cache: str  # "auto" (always on above the minimum), "opt_in" (explicit cache_control) or "none"


@dataclass(frozen=True)
class ProviderSpec:
    """How one provider serves, caches, names and fails."""

    name: str
    models: tuple[ModelOption, ...]
    regions: tuple[str, ...] | None  # None: the provider exposes no region (OpenAI / Anthropic first party)
    cache_min_tokens: int
    ttl_range_s: tuple[float, float]
    reports_cache_write: bool
    noise_source: str  # LLMPerf provider whose per-request noise shape stands in (only bedrock is the same one)
    error_types: tuple[str, str, str, str]  # rate limit, timeout, server error, connection error
    finish: tuple[str, str]  # natural stop, hit max_tokens
    deployments: bool  # has a deployment dimension (Azure deployments, Bedrock provisioned throughput)


PROVIDERS: dict[str, ProviderSpec] = {
    # OpenAI: automatic caching from 1,024 tokens, in-memory retention "typically 5 to 10 minutes" (CONVENTIONS §5).
    "openai": ProviderSpec(
        "openai",
        (
            ModelOption("gpt-4o", "gpt-4o", ("gpt-4o-2024-08-06", "gpt-4o-2024-11-20"), "auto"),
            ModelOption("gpt-4o-mini", "gpt-4o-mini", ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-12-17"), "auto"),
        ),
        None,
        1024,
        (300.0, 600.0),
        False,
        "anyscale",
        ("RateLimitError", "APITimeoutError", "InternalServerError", "APIConnectionError"),
        ("stop", "length"),
        False,
    ),
    "azure.ai.openai": ProviderSpec(
        "azure.ai.openai",
        (
            ModelOption("gpt-4o", "gpt-4o", ("gpt-4o-2024-08-06", "gpt-4o-2024-11-20"), "auto"),
            ModelOption("gpt-4o-mini", "gpt-4o-mini", ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-12-17"), "auto"),
        ),
        ("eastus", "eastus2", "swedencentral", "westus3", "japaneast"),
        1024,
        (300.0, 600.0),
        False,
        "fireworks",
        ("RateLimitError", "APITimeoutError", "InternalServerError", "APIConnectionError"),
        ("stop", "length"),
        True,
    ),
    # Bedrock: Claude prompt caching is opt-in with a 5-minute TTL refreshed on hit and reports writes; Llama has none.
    "aws.bedrock": ProviderSpec(
        "aws.bedrock",
        (
            ModelOption(
                "anthropic.claude-3-5-sonnet-20241022-v2:0",
                "claude-sonnet",
                ("anthropic.claude-3-5-sonnet-20241022-v2:0",),
                "opt_in",
            ),
            ModelOption("meta.llama3-1-70b-instruct-v1:0", "llama-70b", ("meta.llama3-1-70b-instruct-v1:0",), "none"),
        ),
        ("us-east-1", "us-west-2", "eu-central-1", "ap-northeast-1"),
        1024,
        (300.0, 300.0),
        True,
        "bedrock",
        ("ThrottlingException", "ModelTimeoutException", "InternalServerException", "ServiceUnavailableException"),
        ("end_turn", "max_tokens"),
        True,
    ),
    # Anthropic: opt-in cache_control, 5-minute TTL refreshed on each hit, 1,024-token minimum for Sonnet.
    "anthropic": ProviderSpec(
        "anthropic",
        (
            ModelOption(
                "claude-sonnet-4-5",
                "claude-sonnet",
                ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20251124"),
                "opt_in",
            ),
            ModelOption(
                "claude-3-5-sonnet-latest",
                "claude-sonnet",
                ("claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20241022"),
                "opt_in",
            ),
        ),
        None,
        1024,
        (300.0, 300.0),
        True,
        "together",
        ("RateLimitError", "APITimeoutError", "InternalServerError", "OverloadedError"),
        ("end_turn", "max_tokens"),
        False,
    ),
    # Vertex Gemini 2.5 Flash: implicit caching, 2,048-token minimum (CONVENTIONS §5); retention is not documented,
    # we assume the same 5-10 minutes as OpenAI (UNCONFIRMED).
    "gcp.vertex_ai": ProviderSpec(
        "gcp.vertex_ai",
        (
            ModelOption(
                "gemini-2.5-flash", "gemini-flash", ("gemini-2.5-flash", "gemini-2.5-flash-preview-09-2025"), "auto"
            ),
        ),
        ("us-central1", "europe-west4", "asia-northeast1"),
        2048,
        (300.0, 600.0),
        False,
        "perplexity",
        ("ResourceExhausted", "DeadlineExceeded", "InternalServerError", "ServiceUnavailable"),
        ("STOP", "MAX_TOKENS"),
        False,
    ),
}


def _satisfies(prov: ProviderSpec, model: ModelOption, needs: frozenset[str]) -> bool:
    """Whether ``model`` of ``prov`` can host a family with these requirements."""
    checks = {
        "cache": model.cache != "none",
        "no_cache": model.cache != "auto",
        "prefill_matters": True,  # a property of the series' shape, ensured by the kind chosen in make_series
        "regions": prov.regions is not None,
        "deployments": prov.deployments,
        "snapshots": len(model.snapshots) > 1,
    }
    return all(checks[n] for n in needs)


def pick_model(
    rng: np.random.Generator, preferred: str, needs: frozenset[str], counts: dict[str, int]
) -> tuple[ProviderSpec, ModelOption]:
    """The preferred provider if it can satisfy ``needs``, else the least-used one that can (keeps the mix even)."""
    for name in [preferred, *sorted(PROVIDERS, key=lambda p: (counts[p], p))]:
        ok = [m for m in PROVIDERS[name].models if _satisfies(PROVIDERS[name], m, needs)]
        if ok:
            return PROVIDERS[name], ok[int(rng.integers(0, len(ok)))]
    raise ValueError(f"no provider/model satisfies {sorted(needs)}")
