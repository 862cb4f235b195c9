"""The simulator's physics: a latency model per call and a provider prefix-cache replay.

Latency (DESIGN.md): ``TTFT = network(route) + overhead(model) + queue + prefill(model, route) x uncached_input
+ cached_cost x cache_read``; ``decode = ITL x (output - 1)``; ``e2e = TTFT + decode + client overhead``. Prefill is
compute-bound (cost per uncached token), decode is memory-bandwidth-bound (a per-token gap that batching stretches).
The deterministic part is multiplied by real per-request noise resampled from LLMPerf (see ``workload.noise_pool``),
so tails come from measurements, not from a chosen distribution.

The prompt cache is replayed per route: a block (512 tokens) is found when the same prefix was touched on the same
route no longer than the TTL ago (a hit refreshes the TTL, a miss writes the block). See :func:`replay_prefix_cache`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from spanprism.attribution.simulator.workload import BLOCK_TOKENS


@dataclass(frozen=True)
class ModelSpeed:
    """Per-model serving speed on a reference route (route multipliers scale it).

    ``prefill_ms_per_token``: compute-bound prefill of an uncached token. ``cached_ms_per_token``: cost of reading a
    cached token (KV load + attention over it). ``itl_ms``: mean gap between output tokens. ``overhead_ms``: the
    fixed server-side part of TTFT (admission, tokenisation, scheduling, first decode step).
    """

    prefill_ms_per_token: float
    cached_ms_per_token: float
    itl_ms: float
    overhead_ms: float


#: Cached tokens cost ~20% of an uncached one. Anthropic's prompt-caching launch (Aug 2024): a 100k-token cached
#: prompt answered in 2.4 s against 11.5 s uncached, a 10k-token one in 1.1 s against 1.6 s. That gives ~0.09 ms per
#: uncached token for Claude 3.5 Sonnet and (2.4 s - ~0.5 s fixed) / 100k ≈ 0.019 ms per cached token.
CACHED_COST_RATIO = 0.2

#: Per request-model speeds. ITL and overhead are anchored on LLMPerf (bundled): warm hosted endpoints have median
#: TTFT 0.21-0.57 s for 550-token prompts (anyscale 0.21, groq 0.22, perplexity 0.37, bedrock 0.38, fireworks 0.40,
#: together 0.57) of which a 550-token prefill is only ~30-50 ms and the client network ~10-60 ms, so the fixed
#: overhead is ~0.15-0.45 s; median ITL is 5-46 ms (groq 5 ms ... bedrock Llama-2-70B 46 ms).
MODEL_SPEEDS: dict[str, ModelSpeed] = {
    # ~85-100 output tok/s as commonly measured for gpt-4o -> ~11 ms ITL; prefill ~16k tok/s.
    "gpt-4o": ModelSpeed(0.060, 0.060 * CACHED_COST_RATIO, 11.0, 260.0),
    "gpt-4o-mini": ModelSpeed(0.030, 0.030 * CACHED_COST_RATIO, 8.0, 220.0),
    # Claude 3.5/4.x Sonnet: prefill from the Anthropic caching figures above; ~65-75 tok/s output -> ~14 ms ITL.
    "claude-sonnet": ModelSpeed(0.090, 0.090 * CACHED_COST_RATIO, 14.0, 380.0),
    # Llama 70B on Bedrock: ITL 46 ms and TTFT 0.38 s at 550 tokens are the LLMPerf bedrock_70b medians.
    "llama-70b": ModelSpeed(0.080, 0.080 * CACHED_COST_RATIO, 46.0, 330.0),
    # Gemini 2.5 Flash: ~200 tok/s output (groq-like speeds in LLMPerf: 5.3 ms) and a fast prefill.
    "gemini-flash": ModelSpeed(0.025, 0.025 * CACHED_COST_RATIO, 5.0, 240.0),
}

#: Within one streamed response the chunk gaps are more dispersed than the per-request means LLMPerf reports
#: (whose p95/p50 across requests is 1.05-1.6): we take p95/mean of a call's gaps = 1.5 x lognormal(0, 0.1).
ITL_P95_RATIO = 1.5


@dataclass(frozen=True)
class Route:
    """One way a series' calls are served: region/endpoint/deployment/snapshot with its own physics.

    ``network_ms``: client <-> endpoint round trip paid once before the first token (same region ~2-20 ms; across
    the Atlantic ~70-90 ms; US <-> Asia ~150-200 ms, typical public inter-region RTTs). ``prefill_mult`` /
    ``itl_mult``: hardware or snapshot speed relative to :data:`MODEL_SPEEDS`. ``queue_ms``: mean of the
    exponential admission queue on an uncongested endpoint. ``standby``: carries no traffic unless an episode moves
    traffic to it.
    """

    name: str
    region: str | None
    server_address: str
    deployment: str | None
    response_model: str
    system_fingerprint: str | None
    network_ms: float
    prefill_mult: float
    itl_mult: float
    queue_ms: float
    standby: bool = False

    def to_dict(self) -> dict:
        """Plain JSON-serialisable form."""
        return asdict(self)


def mix64(*parts: np.ndarray | int) -> np.ndarray:
    """Combine integer arrays/scalars into well-mixed uint64 keys (splitmix64 finaliser over each part)."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x9E3779B97F4A7C15)
        for part in parts:
            x = h ^ np.asarray(part).astype(np.uint64)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = x ^ (x >> np.uint64(31))
    return np.asarray(h, dtype=np.uint64)


@dataclass(frozen=True)
class CacheUnits:
    """Ragged cache units per call, in call order: unit 0 of a call is its system prefix, then user-prefix runs.

    ``key`` already identifies the route, the system-prefix version and the prefix up to the unit; ``blocks`` is
    the number of 512-token blocks in the unit (a system prefix shorter than one block has 0 and never blocks the
    chain).
    """

    offsets: np.ndarray  # int64 (n_calls + 1)
    key: np.ndarray  # uint64
    blocks: np.ndarray  # int64


def replay_prefix_cache(times_s: np.ndarray, touch: np.ndarray, ttl_s: np.ndarray, units: CacheUnits) -> np.ndarray:
    """Cached prefix of each call, in blocks: the leading units found alive in the provider cache.

    A unit is alive for a call when the same key was last touched by an earlier call at most ``ttl_s`` (the
    *current* effective TTL of the reading call) before it. Every call with ``touch`` (cacheable prompt, not an
    error) touches all of its units: hits refresh the TTL, misses write the block. Exact for a TTL cache keyed by
    prefix, computed for all calls at once with one stable sort instead of a per-call loop.
    """
    n = times_s.size
    per_call = np.diff(units.offsets)
    call_of_unit = np.repeat(np.arange(n), per_call)
    sel = touch[call_of_unit]
    keys, cidx = units.key[sel], call_of_unit[sel]
    order = np.argsort(keys, kind="stable")  # calls are in time order, so each key's touches stay in time order
    k_sorted, c_sorted = keys[order], cidx[order]
    same = np.zeros(k_sorted.size, dtype=bool)
    same[1:] = k_sorted[1:] == k_sorted[:-1]
    prev_t = np.empty(k_sorted.size)
    prev_t[1:] = times_s[c_sorted[:-1]]
    alive_sorted = same & (times_s[c_sorted] - np.where(same, prev_t, 0.0) <= ttl_s[c_sorted])
    alive = np.zeros(units.key.size, dtype=bool)
    alive_idx = np.flatnonzero(sel)[order]
    alive[alive_idx] = alive_sorted
    alive |= units.blocks == 0
    # Leading alive units per call: a unit counts only if no dead unit precedes it within its call.
    dead = (~alive).astype(np.int64)
    cum_dead = np.cumsum(dead)
    before_call = np.concatenate(([0], cum_dead))[units.offsets[:-1]]
    leading = (cum_dead - before_call[call_of_unit]) == 0
    blocks = np.where(leading, units.blocks, 0)
    out = np.zeros(n, dtype=np.int64)
    np.add.at(out, call_of_unit, blocks)
    return np.where(touch, out, 0)


def cache_tokens(
    leading_blocks: np.ndarray, cacheable_blocks: np.ndarray, touch: np.ndarray, min_tokens: int, miss: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(cache_read, cache_write) tokens from the replayed prefix.

    A read shorter than the provider minimum is no hit (OpenAI reports cached tokens only from 1,024 up; Anthropic
    does not cache a prefix below its minimum). ``miss`` marks calls the provider served from a replica without the
    prefix (capacity eviction / load balancing): they read nothing but still write. Writes are the cacheable
    remainder, reported by Anthropic-like providers.
    """
    read = leading_blocks * BLOCK_TOKENS
    read = np.where((read >= min_tokens) & ~miss, read, 0)
    write = np.where(touch, np.maximum(cacheable_blocks * BLOCK_TOKENS - read, 0), 0)
    return read, write


@dataclass(frozen=True)
class CallLatency:
    """Per-call latency components in ms (all arrays, same length)."""

    ttft: np.ndarray
    itl: np.ndarray
    itl_p95: np.ndarray
    decode: np.ndarray
    duration: np.ndarray


def call_latency(
    *,
    speed: ModelSpeed,
    network_ms: np.ndarray,
    prefill_mult: np.ndarray,
    itl_mult: np.ndarray,
    queue_ms: np.ndarray,
    uncached: np.ndarray,
    cached: np.ndarray,
    output: np.ndarray,
    noise_ttft: np.ndarray,
    noise_itl: np.ndarray,
    p95_jitter: np.ndarray,
    client_ms: np.ndarray,
) -> CallLatency:
    """Apply the latency physics to arrays of calls (see module docstring)."""
    prefill = prefill_mult * (speed.prefill_ms_per_token * uncached + speed.cached_ms_per_token * cached)
    ttft = (network_ms + speed.overhead_ms + prefill) * noise_ttft + queue_ms
    itl = speed.itl_ms * itl_mult * noise_itl
    decode = itl * np.maximum(output - 1, 0)
    return CallLatency(
        ttft=ttft,
        itl=itl,
        itl_p95=itl * ITL_P95_RATIO * p95_jitter,
        decode=decode,
        duration=ttft + decode + client_ms,
    )
