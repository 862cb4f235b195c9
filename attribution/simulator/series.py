"""One series end to end: arrivals -> prompts -> episodes -> routes -> prompt cache -> latency -> numpy columns.

The only per-call work is vectorised numpy; the prefix-cache replay is one stable sort (``physics``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from spanprism.attribution.simulator.catalog import SeriesSpec
from spanprism.attribution.simulator.effects import CallEffects, apply_episode, rate_multiplier, surge_rate
from spanprism.attribution.simulator.habits import SeriesHabits
from spanprism.attribution.simulator.physics import MODEL_SPEEDS, cache_tokens, call_latency, mix64, replay_prefix_cache
from spanprism.attribution.simulator.scenarios import Episode
from spanprism.attribution.simulator.traffic import MINUTE, arrivals, assign_routes, cache_units, prompts, seasonal_rate
from spanprism.attribution.simulator.workload import BLOCK_TOKENS, noise_pool, prompt_trace

#: Shares of error kinds (rate limit, timeout, server error, connection error) among failed calls.
ERROR_MIX = (0.5, 0.1, 0.25, 0.15)
#: Client timeout of a hung call (app-level timeouts of 30-60 s are common; SDK defaults are longer).
TIMEOUT_MS = 60_000.0


@dataclass
class SeriesCalls:
    """Numpy columns of one series' calls (time-ordered) plus what the labels need."""

    t: np.ndarray
    route: np.ndarray
    error: np.ndarray
    error_kind: np.ndarray
    input_tokens: np.ndarray
    cache_read: np.ndarray
    cache_write: np.ndarray
    output: np.ndarray
    length_hit: np.ndarray
    ttft: np.ndarray
    itl: np.ndarray
    itl_p95: np.ndarray
    decode: np.ndarray
    duration: np.ndarray
    fx: CallEffects
    session_key: np.ndarray
    queue_ms: np.ndarray


def _arrival_streams(
    spec: SeriesSpec,
    episodes: list[Episode],
    total_s: float,
    epoch_s: float,
    rng: np.random.Generator,
    habits: SeriesHabits | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Times and stream ids (0 = own traffic, k + 1 = surge of episode k), time-ordered."""
    minutes = np.arange(int(np.ceil(total_s / MINUTE)))
    mid = minutes * MINUTE + MINUTE / 2
    seasonal = seasonal_rate(spec, minutes, epoch_s, rng)
    if habits is not None:  # idle hours, bursts, a late first call
        seasonal = seasonal * habits.activity(spec, minutes, epoch_s)
    parts = [arrivals(seasonal * rate_multiplier(episodes, mid), rng)]
    ids = [0]
    for k, ep in enumerate(episodes):
        if ep.family == "none/own_traffic_surge":
            parts.append(arrivals(seasonal * surge_rate(ep, mid), rng))
            ids.append(k + 1)
    t = np.concatenate(parts)
    stream = np.concatenate([np.full(p.size, s, np.int64) for p, s in zip(parts, ids, strict=True)])
    keep = t < total_s
    order = np.argsort(t[keep], kind="stable")
    return t[keep][order], stream[keep][order]


def _effects(spec: SeriesSpec, episodes: list[Episode], t: np.ndarray, rng: np.random.Generator) -> CallEffects:
    fx = CallEffects.neutral(t.size)
    for k, ep in enumerate(episodes):
        apply_episode(fx, k, ep, spec, t, rng)
    return fx


def _reference(values: np.ndarray, ok: np.ndarray, t: np.ndarray, episodes: list[Episode]) -> np.ndarray:
    """Per-episode median of ``values`` over the clean window of equal length just before its onset."""
    out = np.zeros(len(episodes) + 1)
    for k, ep in enumerate(episodes):
        pre = ok & (t >= ep.start_s - (ep.end_s - ep.start_s)) & (t < ep.start_s)
        if not pre.any():
            pre = ok & (t < ep.start_s)
        out[k] = float(np.median(values[pre])) if pre.any() else float(np.median(values[ok])) if ok.any() else 0.0
    return out  # index -1 (no episode) hits the trailing 0


def generate_calls(
    spec: SeriesSpec,
    episodes: list[Episode],
    total_s: float,
    epoch_s: float,
    seed: np.random.SeedSequence,
    habits: SeriesHabits | None = None,
) -> SeriesCalls:
    """Simulate every call of one series (see module docstring); ``habits`` shape its traffic and own sizes."""
    rng = np.random.default_rng(seed)
    trace = prompt_trace(spec.trace)
    t, stream = _arrival_streams(spec, episodes, total_s, epoch_s, rng, habits)
    n = t.size
    pr = prompts(spec, trace, stream, rng)
    own_out = None
    if habits is not None:
        # Drift and steps change the workload itself: the base sizes move, so the cache units (built on the base)
        # never hold more prompt than the call sends.
        own_user, own_out = habits.size_multipliers(t)
        pr = replace(pr, user_base=np.maximum(np.round(pr.user_base * own_user), 1).astype(np.int64))
    fx = _effects(spec, episodes, t, rng)
    route = assign_routes(spec, fx.route_override, rng)
    sys_tokens = np.round(spec.sys_tokens * fx.sys_mult).astype(np.int64)
    out_mult = fx.out_mult if own_out is None else fx.out_mult * own_out
    user = np.round(pr.user_base * fx.user_mult).astype(np.int64)
    input_tokens = sys_tokens + user
    out_raw = np.maximum(np.round(pr.out_base * out_mult), 1).astype(np.int64)
    output = np.minimum(out_raw, spec.max_tokens)
    error = rng.random(n) < spec.error_rate
    error_kind = rng.choice(4, size=n, p=ERROR_MIX)

    unique = np.where(fx.unique_prefix, np.arange(1, n + 1), 0)
    units = cache_units(spec, trace, pr, route, mix64(fx.sys_version, fx.variant, unique), sys_tokens)
    touch = spec.cache_enabled & ~error & (input_tokens >= spec.cache_min_tokens)
    lead = replay_prefix_cache(t, touch, spec.cache_ttl_s * fx.ttl_mult, units)
    miss = rng.random(n) < 1.0 - (1.0 - spec.cache_miss_prob) * (1.0 - fx.miss_extra)
    read, write = cache_tokens(lead, input_tokens // BLOCK_TOKENS, touch, spec.cache_min_tokens, miss)

    rt = spec.routes
    net = np.array([r.network_ms for r in rt])[route]
    queue = rng.exponential(np.array([r.queue_ms for r in rt])[route])
    noise_ttft, noise_itl = noise_pool(spec.noise_source).draw(rng, n)
    lat = call_latency(
        speed=MODEL_SPEEDS[spec.speed],
        network_ms=net,
        prefill_mult=np.array([r.prefill_mult for r in rt])[route],
        itl_mult=np.array([r.itl_mult for r in rt])[route] * fx.itl_mult,
        queue_ms=queue,
        uncached=input_tokens - read,
        cached=read,
        output=output,
        noise_ttft=noise_ttft,
        noise_itl=noise_itl,
        p95_jitter=rng.lognormal(0.0, 0.1, n),
        client_ms=spec.client_ms + rng.exponential(1.0, n),
    )
    ok = ~error
    # Contention and client delays are sized on the series' own pre-episode medians (see scenarios.FAMILY_SPECS).
    queue_add = rng.exponential(1.0, n) * fx.queue_rel * _reference(lat.ttft, ok, t, episodes)[fx.episode]
    delay = fx.delay_rel * _reference(lat.duration, ok, t, episodes)[fx.episode]
    ttft = lat.ttft + queue_add
    duration = lat.duration + queue_add + delay
    duration = np.where(error, _error_duration(error_kind, net, ttft, rng), duration)
    first_run = trace.run_offsets[pr.trace_idx]
    has_run = trace.run_offsets[pr.trace_idx + 1] > first_run
    conv = np.where(has_run, trace.run_id[np.minimum(first_run, trace.run_id.size - 1)], -1 - pr.trace_idx)
    return SeriesCalls(
        t=t,
        route=route,
        error=error,
        error_kind=error_kind,
        input_tokens=input_tokens,
        cache_read=read,
        cache_write=write,
        output=output,
        length_hit=out_raw >= spec.max_tokens,
        ttft=ttft,
        itl=lat.itl,
        itl_p95=lat.itl_p95,
        decode=lat.decode,
        duration=duration,
        fx=fx,
        session_key=mix64(spec.salt, pr.loop_key, conv),
        queue_ms=queue + queue_add,
    )


def _error_duration(kind: np.ndarray, net: np.ndarray, ttft: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How long a failed call takes: a 429 comes back after a round trip, a timeout after the client's limit,
    a server error after part of the work, a connection error after the connect retries."""
    n = kind.size
    return np.select(
        [kind == 0, kind == 1, kind == 2],
        [
            net + rng.uniform(5.0, 40.0, n),
            np.full(n, TIMEOUT_MS) + rng.uniform(0.0, 50.0, n),
            ttft * rng.uniform(0.5, 2.0, n),
        ],
        default=rng.uniform(10.0, 3000.0, n),
    )
