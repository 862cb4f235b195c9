"""Providers, models, routes and series profiles of the workload simulator.

A :class:`SeriesSpec` is everything fixed about one series ``(service, provider, request_model, operation)``: its
traffic (rate, seasonality), prompt shape (system prefix, user-part scaling of a Mooncake trace, outputs), prompt
cache policy and routes (active ones plus *standby* routes that only routing episodes send traffic to).
Provider names follow the current GenAI semconv values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from spanprism.attribution.simulator.physics import MODEL_SPEEDS, Route

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

#: Prompt shape per kind of service: Mooncake trace, median system prefix and user-part ranges (tokens), output
#: scale on the trace's output lengths, max_tokens and service names.
KINDS: dict[str, dict] = {
    "chat": {
        "trace": "conversation",
        "sys": (1200, 4000),
        "user": (500, 4000),
        "out": (0.3, 0.8),
        "max": 4096,
        "names": ("support-chat", "assistant", "helpdesk-bot", "sales-copilot", "tutor-chat", "hr-assistant"),
    },
    "rag": {
        "trace": "synthetic",
        "sys": (500, 2000),
        "user": (4000, 30000),
        "out": (0.8, 2.0),
        "max": 4096,
        "names": ("docs-search", "kb-answers", "legal-rag", "policy-qa"),
    },
    "agent": {
        "trace": "synthetic",
        "sys": (3000, 12000),
        "user": (1000, 6000),
        "out": (0.3, 1.0),
        "max": 4096,
        "names": (
            "code-agent",
            "ops-agent",
            "travel-agent",
            "data-agent",
            "sre-agent",
            "billing-agent",
            "crm-agent",
            "qa-agent",
        ),
    },
    "extract": {
        "trace": "conversation",
        "sys": (400, 1500),
        "user": (1000, 8000),
        "out": (0.1, 0.4),
        "max": 1024,
        "names": ("invoice-extract", "ticket-triage", "summarizer", "email-tagger"),
    },
}


@dataclass(frozen=True)
class SeriesSpec:
    """One simulated series and its fixed configuration (see module docstring)."""

    index: int
    service: str
    provider: str
    request_model: str
    operation: str
    kind: str
    streaming: bool
    rate: float  # mean calls/s before seasonality
    diurnal_amplitude: float
    peak_hour_utc: float
    weekend_factor: float
    routes: tuple[Route, ...]
    route_weights: tuple[float, ...]
    speed: str
    cache_enabled: bool
    cache_min_tokens: int
    cache_ttl_s: float
    reports_cache_write: bool
    cache_miss_prob: float
    sys_tokens: int
    template: str
    trace: str
    user_scale: float
    user_clip: tuple[int, int]
    user_median: float  # median user-part tokens (trace median x user_scale)
    out_scale: float
    out_median: float  # median output tokens (trace median x out_scale)
    max_tokens: int
    error_rate: float
    noise_source: str
    tenants: int
    client_ms: float
    salt: int = field(repr=False, default=0)

    @property
    def key(self) -> dict[str, str]:
        """The series identity as the regression contract names it."""
        return {
            "service": self.service,
            "provider": self.provider,
            "model": self.request_model,
            "operation": self.operation,
        }

    def latency_estimate(self, cached_sys: bool | None = None) -> tuple[float, float]:
        """Noise-free (TTFT, e2e) ms of a median call on the primary route, the system prefix cached or not."""
        sp, route = MODEL_SPEEDS[self.speed], self.routes[0]
        cached = self.cache_enabled if cached_sys is None else cached_sys
        sys_cost = sp.cached_ms_per_token if cached else sp.prefill_ms_per_token
        ttft = (
            route.network_ms
            + sp.overhead_ms
            + route.queue_ms
            + route.prefill_mult * (sp.prefill_ms_per_token * self.user_median + sys_cost * self.sys_tokens)
        )
        return ttft, ttft + sp.itl_ms * route.itl_mult * max(self.out_median - 1.0, 0.0) + self.client_ms

    def primary_latency(self) -> float:
        """Median of the latency a regression shows in first: TTFT when streaming, else e2e."""
        ttft, e2e = self.latency_estimate()
        return ttft if self.streaming else e2e

    def cache_saving_ms(self) -> float:
        """What a cached system prefix saves a median call (the stake of a cache eviction)."""
        if not self.cache_enabled or self.sys_tokens < self.cache_min_tokens:
            return 0.0
        return self.latency_estimate(cached_sys=False)[0] - self.latency_estimate(cached_sys=True)[0]

    def to_dict(self) -> dict:
        """JSON-serialisable configuration (routes expanded)."""
        out = asdict(self)
        out["routes"] = [r.to_dict() for r in self.routes]
        out["route_weights"] = list(self.route_weights)
        out["user_clip"] = list(self.user_clip)
        return out


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, size=(n + 1) // 2))[:n]


def _route(
    prov: ProviderSpec,
    rng: np.random.Generator,
    region: str | None,
    deployment: str | None,
    snapshot: str,
    name: str,
    *,
    network: float,
    slow: tuple[float, float],
    standby: bool,
) -> Route:
    if prov.name == "azure.ai.openai":
        address = f"{deployment or 'llm'}-{region}.openai.azure.com"
    elif prov.name == "aws.bedrock":
        address = f"bedrock-runtime.{region}.amazonaws.com"
    elif prov.name == "gcp.vertex_ai":
        address = f"{region}-aiplatform.googleapis.com"
    else:
        address = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}[prov.name]
    fingerprint = f"fp_{_hex(rng, 10)}" if prov.name in ("openai", "azure.ai.openai") else None
    return Route(
        name=name,
        region=region,
        server_address=address,
        deployment=deployment,
        response_model=snapshot,
        system_fingerprint=fingerprint,
        network_ms=network,
        prefill_mult=float(rng.uniform(*slow)),
        itl_mult=float(rng.uniform(*slow)),
        queue_ms=float(rng.uniform(5.0, 30.0)),
        standby=standby,
    )


def make_routes(
    prov: ProviderSpec, model: ModelOption, rng: np.random.Generator
) -> tuple[tuple[Route, ...], tuple[float, ...]]:
    """Active routes (1-3, weighted) and standby routes (far region, other deployment, next snapshot)."""
    n_active = int(rng.integers(1, 4))
    regions = list(prov.regions) if prov.regions else [None]
    # Most series of a provider sit in its first ("home") region, so a regional incident can hit several at once.
    home = regions[0] if rng.random() < 0.7 else regions[int(rng.integers(0, len(regions)))]
    others = [r for r in regions if r != home]
    dep = f"{model.request_model.split('.')[-1].split(':')[0]}-prod" if prov.deployments else None
    snap = model.snapshots[0]
    routes = [
        _route(
            prov, rng, home, dep, snap, "primary", network=float(rng.uniform(5, 40)), slow=(0.95, 1.05), standby=False
        )
    ]
    for i in range(1, n_active):
        if others:  # a second region: farther, ~+20-80 ms
            region = others.pop(int(rng.integers(0, len(others))))
            routes.append(
                _route(
                    prov,
                    rng,
                    region,
                    dep,
                    snap,
                    f"active{i}",
                    network=float(rng.uniform(25, 120)),
                    slow=(0.95, 1.15),
                    standby=False,
                )
            )
        else:  # providers without regions: several backends (fingerprints) behind one host
            routes.append(
                _route(
                    prov,
                    rng,
                    home,
                    dep,
                    snap,
                    f"active{i}",
                    network=routes[0].network_ms,
                    slow=(0.95, 1.1),
                    standby=False,
                )
            )
    share = rng.dirichlet(np.full(len(routes), 2.0))
    share = np.sort(share)[::-1]
    weights = [float(x) for x in share]
    if others:  # far region for region shifts: cross-continent RTT, older/busier hardware
        routes.append(
            _route(
                prov,
                rng,
                others[int(rng.integers(0, len(others)))],
                dep,
                snap,
                "standby_region",
                network=float(rng.uniform(90, 200)),
                slow=(1.1, 1.6),
                standby=True,
            )
        )
    if prov.deployments:  # another deployment in the home region: e.g. standard vs provisioned capacity
        routes.append(
            _route(
                prov,
                rng,
                home,
                f"{dep}-std2",
                snap,
                "standby_deployment",
                network=routes[0].network_ms,
                slow=(1.3, 2.0),
                standby=True,
            )
        )
    if len(model.snapshots) > 1:  # the alias moves to a new snapshot with a different speed
        routes.append(
            _route(
                prov,
                rng,
                home,
                dep,
                model.snapshots[1],
                "standby_snapshot",
                network=routes[0].network_ms,
                slow=(1.25, 1.8),
                standby=True,
            )
        )
    weights += [0.0] * (len(routes) - len(weights))
    return tuple(routes), tuple(weights)


def _satisfies(prov: ProviderSpec, model: ModelOption, needs: frozenset[str]) -> bool:
    checks = {
        "cache": model.cache != "none",
        "no_cache": model.cache != "auto",
        "prefill_matters": True,  # a property of the series' shape, ensured by the kind chosen in make_series
        "regions": prov.regions is not None,
        "deployments": prov.deployments,
        "snapshots": len(model.snapshots) > 1,
    }
    return all(checks[n] for n in needs)


def _pick_model(
    rng: np.random.Generator, preferred: str, needs: frozenset[str], counts: dict[str, int]
) -> tuple[ProviderSpec, ModelOption]:
    """The preferred provider if it can satisfy ``needs``, else the least-used one that can (keeps the mix even)."""
    for name in [preferred, *sorted(PROVIDERS, key=lambda p: (counts[p], p))]:
        ok = [m for m in PROVIDERS[name].models if _satisfies(PROVIDERS[name], m, needs)]
        if ok:
            return PROVIDERS[name], ok[int(rng.integers(0, len(ok)))]
    raise ValueError(f"no provider/model satisfies {sorted(needs)}")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


@dataclass(frozen=True)
class TraceStats:
    """What series generation needs to know of a Mooncake trace."""

    size: int
    user_median: float
    out_median: float


def stratified_rates(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """``n`` rates log-uniform over [lo, hi], one per equal-width log stratum (shuffled): every seed spans the
    whole range and the total traffic (hence run time and memory) stays stable across seeds."""
    u = (np.arange(n) + rng.random(n)) / n
    rates = np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))
    rng.shuffle(rates)
    return rates


def make_series(
    rng: np.random.Generator,
    n: int,
    hints: list[frozenset[str]],
    rate_range: tuple[float, float],
    traces: dict[str, TraceStats],
) -> list[SeriesSpec]:
    """Draw ``n`` series; series ``i`` satisfies ``hints[i % len(hints)]`` so that every requested family has a home.

    Providers are cycled in a seed-shuffled order (balanced mix); a third of the series are non-streaming.
    """
    prov_cycle = list(PROVIDERS)
    rng.shuffle(prov_cycle)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    non_streaming = set(rng.choice(n, size=max(1, n // 3), replace=False).tolist()) if n >= 2 else set()
    rates = stratified_rates(rng, n, *rate_range)
    used: set[str] = set()
    out: list[SeriesSpec] = []
    for i in range(n):
        needs = hints[i % len(hints)] if hints else frozenset()
        counts = {p: sum(s.provider == p for s in out) for p in PROVIDERS}
        prov, model = _pick_model(rng, prov_cycle[i % len(prov_cycle)], needs, counts)
        if needs & {"cache", "prefill_matters"}:  # a big shared prefix with short user turns: prefill is felt
            kind = ("agent", "chat")[int(rng.integers(0, 2))]
        else:
            kind = "extract" if (i in non_streaming and rng.random() < 0.5) else kinds[i % len(kinds)]
        streaming = i not in non_streaming or "prefill_matters" in needs
        spec = _make_one(rng, i, prov, model, kind, needs, streaming, float(rates[i]), traces, used)
        out.append(_make_cache_matter(spec) if "cache" in needs else spec)
    return out


def _make_cache_matter(spec: SeriesSpec) -> SeriesSpec:
    """Grow the system prefix until a cache miss costs >= 15% of the series' median primary latency (max 20k)."""
    while spec.cache_saving_ms() < 0.15 * spec.primary_latency() and spec.sys_tokens < 20_000:
        spec = replace(spec, sys_tokens=min(20_000, int(spec.sys_tokens * 1.5)))
    return spec


def _make_one(
    rng: np.random.Generator,
    i: int,
    prov: ProviderSpec,
    model: ModelOption,
    kind: str,
    needs: frozenset[str],
    streaming: bool,
    rate: float,
    traces: dict[str, TraceStats],
    used: set[str],
) -> SeriesSpec:
    spec = KINDS[kind]
    names = [s for s in spec["names"] if s not in used]
    service = names[int(rng.integers(0, len(names)))] if names else f"{spec['names'][0]}-{i}"
    used.add(service)
    if model.cache == "none" or "no_cache" in needs:
        cache_on = False
    else:
        cache_on = model.cache == "auto" or "cache" in needs or bool(rng.random() < 0.7)
    sys_tokens = int(_log_uniform(rng, *spec["sys"]))
    if "cache" in needs:  # the system prefix alone must be cacheable for a cache family to bite
        sys_tokens = max(sys_tokens, prov.cache_min_tokens + 256)
    user_median = _log_uniform(rng, *spec["user"])
    out_scale = float(rng.uniform(*spec["out"]))
    trace = traces[spec["trace"]]
    routes, weights = make_routes(prov, model, rng)
    return SeriesSpec(
        index=i,
        service=service,
        provider=prov.name,
        request_model=model.request_model,
        operation=OPERATION.get(prov.name, "chat"),
        kind=kind,
        streaming=streaming,
        rate=rate,
        # Business-hours traffic: daily swing ±30-70%, peak 13-19 UTC (US+EU overlap), weekends at 40-90%.
        diurnal_amplitude=float(rng.uniform(0.3, 0.7)),
        peak_hour_utc=float(rng.uniform(13.0, 19.0)),
        weekend_factor=float(rng.uniform(0.4, 0.9)),
        routes=routes,
        route_weights=weights,
        speed=model.speed,
        cache_enabled=cache_on,
        cache_min_tokens=prov.cache_min_tokens,
        cache_ttl_s=float(rng.uniform(*prov.ttl_range_s)),
        reports_cache_write=prov.reports_cache_write,
        # Even a hot prefix misses now and then (replica routing, capacity eviction): 1-4% of calls.
        cache_miss_prob=float(rng.uniform(0.01, 0.04)),
        sys_tokens=sys_tokens,
        template=f"{service}.system",
        trace=spec["trace"],
        user_scale=user_median / trace.user_median,
        user_clip=(max(16, spec["user"][0] // 8), min(120_000, spec["user"][1] * 4)),
        user_median=user_median,
        out_scale=out_scale,
        out_median=out_scale * trace.out_median,
        max_tokens=spec["max"],
        error_rate=float(rng.uniform(0.003, 0.03)),
        noise_source=prov.noise_source,
        tenants=0 if rng.random() < 0.5 else int(rng.integers(5, 60)),
        client_ms=float(rng.uniform(1.0, 6.0)),
        salt=int(rng.integers(1, 2**62)),
    )
