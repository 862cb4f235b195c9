"""Series profiles of the workload simulator: the kinds of service and the draw of each series' configuration.

A :class:`SeriesSpec` is everything fixed about one series ``(service, provider, request_model, operation)``: its
traffic (rate, seasonality), prompt shape (system prefix, user-part scaling of a Mooncake trace, outputs), prompt
cache policy and routes (active ones plus *standby* routes that only routing episodes send traffic to). The
providers and their models are in ``providers.py``, the routes in ``routes.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from spanprism.attribution.simulator.physics import MODEL_SPEEDS, Route
from spanprism.attribution.simulator.providers import OPERATION, PROVIDERS, ModelOption, ProviderSpec, pick_model
from spanprism.attribution.simulator.routes import make_routes

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
        prov, model = pick_model(rng, prov_cycle[i % len(prov_cycle)], needs, counts)
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
