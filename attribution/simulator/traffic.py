"""Arrivals and prompts of one series: seasonal Cox arrivals and Mooncake-derived prompts with prefix identity.

Arrivals: rate(t) = base x diurnal(hour) x weekday x Mooncake burst(minute) x episode rate factors, piecewise
constant per minute; gaps are resampled from the Mooncake synthetic trace (normalised) in operational time and
mapped back through the cumulative rate, so the gap shape is real and the rate follows the seasonality.

Prompts: each call replays the next request of the series' Mooncake trace (a per-stream cursor; the trace is looped
with a fresh block namespace per loop). Its user part is scaled to the series' size, the series' system prefix is
put in front, and the prefix-block identity is kept: see :func:`cache_units`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spanprism.attribution.simulator.catalog import SeriesSpec
from spanprism.attribution.simulator.physics import CacheUnits, mix64
from spanprism.attribution.simulator.workload import BLOCK_TOKENS, PromptTrace, burst_profile, gap_shape

MINUTE = 60.0


def seasonal_rate(spec: SeriesSpec, minutes: np.ndarray, epoch_s: float, rng: np.random.Generator) -> np.ndarray:
    """calls/s per minute: base x diurnal x weekday x burst (no episodes)."""
    t_abs = epoch_s + minutes * MINUTE + MINUTE / 2
    hour = (t_abs % 86400.0) / 3600.0
    diurnal = 1.0 + spec.diurnal_amplitude * np.cos(2 * np.pi * (hour - spec.peak_hour_utc) / 24.0)
    dow = (np.floor(t_abs / 86400.0).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    weekday = np.where(dow >= 5, spec.weekend_factor, 1.0)
    burst = burst_profile()
    # Walk the real per-minute profile from a random point, forwards or backwards, cycling.
    idx = (int(rng.integers(0, burst.size)) + minutes * (1 if rng.random() < 0.5 else -1)) % burst.size
    return spec.rate * diurnal * weekday * burst[idx]


def arrivals(rate_per_min: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s) of a renewal process with Mooncake gap shape under a per-minute piecewise rate."""
    lam = np.cumsum(rate_per_min * MINUTE)
    total = float(lam[-1]) if lam.size else 0.0
    if total <= 0:
        return np.zeros(0)
    shape = gap_shape()
    u = np.cumsum(shape[rng.integers(0, shape.size, size=int(total * 1.05 + 50))]) + rng.random() * shape.mean()
    while u[-1] < total:
        more = np.cumsum(shape[rng.integers(0, shape.size, size=int(total * 0.1 + 50))])
        u = np.concatenate((u, u[-1] + more))
    u = u[u < total]
    k = np.searchsorted(lam, u, side="right")
    lam_prev = np.concatenate(([0.0], lam))[k]
    return k * MINUTE + (u - lam_prev) / rate_per_min[k]


@dataclass
class Prompts:
    """Per-call prompt shape before episodes touch it (token counts of the unchanged workload)."""

    trace_idx: np.ndarray  # Mooncake request index
    loop_key: np.ndarray  # uint64 namespace of (stream, chunk): a replayed chunk never hits another chunk
    user_base: np.ndarray  # user-part tokens before growth
    out_base: np.ndarray  # output tokens before growth, before the max_tokens cap


#: Parallel replay cursors per trace. The synthetic trace drifts in phases (its median input moves from ~1k to
#: ~16k tokens across the file); sixteen cursors in different places mix the phases at every moment. The
#: conversation trace is stationary and its conversations' turns must stay close in time: one cursor.
CURSORS = {"synthetic": 16, "conversation": 1}


def chunk_length(spec: SeriesSpec, trace_size: int, cursors: int) -> int:
    """Requests per replayed chunk of one cursor: about two cache TTLs of the cursor's traffic (at least 4).

    A cursor replays the trace in chunks taken from random places (stationary over an hour), yet every prefix reuse
    close enough in time to hit a cache (closer than one TTL) stays inside a chunk.
    """
    return int(np.clip(round(2.0 * spec.rate * spec.cache_ttl_s / cursors), 4, trace_size))


def _cursor_positions(cursor: np.ndarray, stream: np.ndarray, n_cursors: int) -> np.ndarray:
    """Running count of each call within its (stream, cursor)."""
    group = stream * n_cursors + cursor
    order = np.argsort(group, kind="stable")
    g = group[order]
    first = np.concatenate(([0], np.flatnonzero(g[1:] != g[:-1]) + 1))
    counts = np.diff(np.concatenate((first, [g.size])))
    pos = np.empty(g.size, dtype=np.int64)
    pos[order] = np.arange(g.size) - np.repeat(first, counts)
    return pos


def prompts(spec: SeriesSpec, trace: PromptTrace, stream: np.ndarray, rng: np.random.Generator) -> Prompts:
    """Prompt shape of each call (chunked replay over parallel cursors, one block namespace per chunk)."""
    k = CURSORS.get(trace.name, 1)
    cursor = rng.integers(0, k, size=stream.size)
    pos = _cursor_positions(cursor, stream, k)
    length = chunk_length(spec, trace.size, k)
    chunk = pos // length
    start = (mix64(spec.salt, stream, cursor, chunk) % np.uint64(trace.size - length + 1)).astype(np.int64)
    j = start + pos % length
    lo, hi = spec.user_clip
    user = np.clip(np.round(trace.user_tokens[j] * spec.user_scale), lo, hi).astype(np.int64)
    out = np.maximum(np.round(trace.output_tokens[j] * spec.out_scale), 1).astype(np.int64)
    return Prompts(trace_idx=j, loop_key=mix64(spec.salt, stream, cursor, chunk, 1), user_base=user, out_base=out)


def cache_units(
    spec: SeriesSpec, trace: PromptTrace, pr: Prompts, route: np.ndarray, prefix_key: np.ndarray, sys_tokens: np.ndarray
) -> CacheUnits:
    """Cache units of every call: its system prefix, then the shareable runs of its Mooncake user part.

    A user block ``i`` of the scaled prompt ends inside source block ``floor((i + 1) / s)`` (``s`` = user scale),
    so the number of scaled blocks covered by source blocks ``0..b`` is ``floor((b + 1) s)``: a run of source blocks
    ending at ``b`` contributes the difference, and its key (source block id at ``b`` + loop + system prefix
    version + route) identifies the whole prefix. Blocks appended by user-input growth are new content and never
    shared; they are only counted as cacheable (written) blocks.
    """
    n = pr.trace_idx.size
    r0 = trace.run_offsets[pr.trace_idx]
    n_runs = trace.run_offsets[pr.trace_idx + 1] - r0
    per_call = 1 + n_runs
    offsets = np.concatenate(([0], np.cumsum(per_call))).astype(np.int64)
    total = int(offsets[-1])
    call = np.repeat(np.arange(n), per_call)
    within = np.arange(total) - offsets[call]
    is_sys = within == 0
    run = np.where(is_sys, 0, r0[call] + within - 1)
    k_user = pr.user_base // BLOCK_TOKENS
    cum = np.minimum(np.floor((trace.run_end[run] + 1) * spec.user_scale).astype(np.int64), k_user[call])
    prev_end = np.where(within >= 2, trace.run_end[np.maximum(run - 1, 0)], -1)
    cum_prev = np.minimum(np.floor((prev_end + 1) * spec.user_scale).astype(np.int64), k_user[call])
    blocks = np.where(is_sys, sys_tokens[call] // BLOCK_TOKENS, np.maximum(cum - cum_prev, 0))
    base = mix64(spec.salt, route, prefix_key)
    key = np.where(is_sys, base[call], mix64(base[call], pr.loop_key[call], trace.run_id[run]))
    return CacheUnits(offsets=offsets, key=key, blocks=blocks.astype(np.int64))


def assign_routes(spec: SeriesSpec, override: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Route index per call: the series' active weights, unless a routing episode forced one."""
    w = np.asarray(spec.route_weights, dtype=np.float64)
    route = rng.choice(w.size, size=override.size, p=w / w.sum())
    return np.where(override >= 0, override, route)
