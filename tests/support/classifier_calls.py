"""Seeded synthetic ``llm_calls`` windows of one series with known physics, for the classifier's tests.

Physics: a prompt is a shared prefix (system prompt, cached on a hit) plus a user part; TTFT = (network_r +
prefill · uncached + 0.1 · prefill · cached) · lognormal noise; decode = ITL_r · (output − 1); duration =
TTFT + decode, all scaled by ``latency_scale`` (a uniformly slower provider). Calls arrive as a Poisson stream;
each carries a prompt key and a route (region). Independent of the simulator in attribution/simulate.py on
purpose: the classifier must hold on physics it was not trained on.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from spanprism.models.schema import conform

T0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
REGIONS = {"eastus": (120.0, 12.0), "westeurope": (260.0, 18.0)}  # network ms, ITL ms


def calls(
    n: int,
    seed: int,
    *,
    t0_h: float = 0.0,
    hours: float = 4.0,
    prefix: int = 4000,
    user: float = 1500.0,
    hit_rate: float = 0.9,
    west_share: float = 0.0,
    west_hit_rate: float | None = None,
    output: float = 200.0,
    latency_scale: float = 1.0,
    keys: int = 1,
    unique_key_share: float = 0.0,
    streaming: bool = True,
) -> pa.Table:
    """n calls of one series over ``hours`` starting ``t0_h`` hours after T0 (module docstring physics)."""
    rng = np.random.default_rng(seed)
    start = np.sort(rng.uniform(0, hours * 3600, n)) + t0_h * 3600
    west = rng.random(n) < west_share
    region = np.where(west, "westeurope", "eastus")
    net = np.where(west, *[REGIONS[r][0] for r in ("westeurope", "eastus")])
    itl = np.where(west, *[REGIONS[r][1] for r in ("westeurope", "eastus")])
    hits = np.where(west, west_hit_rate if west_hit_rate is not None else hit_rate, hit_rate)
    inp = prefix + np.round(rng.lognormal(np.log(user), 0.5, n)).astype(np.int64)
    cached = np.where(rng.random(n) < hits, prefix, 0)
    out = np.maximum(2, np.round(rng.lognormal(np.log(output), 0.4, n))).astype(np.int64)
    ttft = (net + 0.08 * (inp - cached) + 0.008 * cached) * rng.lognormal(0, 0.2, n) * latency_scale
    decode = itl * (out - 1) * rng.lognormal(0, 0.1, n) * latency_scale
    key = np.array([f"tmpl@v1~{k}" for k in rng.integers(0, keys, n)], dtype=object)
    unique = rng.random(n) < unique_key_share
    key[unique] = [f"tmpl@v1+{seed}-{i}" for i in np.flatnonzero(unique)]
    ids = rng.integers(0, 2**62, (n, 3))
    return conform(
        pa.table(
            {
                "trace_id": [f"{a:016x}{b:016x}" for a, b in ids[:, :2]],
                "span_id": [f"{c:016x}" for c in ids[:, 2]],
                "service": ["rag"] * n,
                "provider": ["openai"] * n,
                "request_model": ["gpt-4o"] * n,
                "operation": ["chat"] * n,
                "response_model": ["gpt-4o-2024-08-06"] * n,
                "region": region.tolist(),
                "server_address": [f"{r}.api.example.com" for r in region],
                "prompt_key": key.tolist(),
                "start_time": pa.array(
                    [T0 + dt.timedelta(seconds=float(s)) for s in start], pa.timestamp("us", tz="UTC")
                ),
                "duration_ms": ttft + decode,
                "ttft_ms": pa.array(ttft if streaming else [None] * n, pa.float64()),
                "streaming": [streaming] * n,
                "status": ["ok"] * n,
                "input_tokens": inp,
                "cache_read_tokens": cached,
                "uncached_input_tokens": inp - cached,
                "output_tokens": out,
            }
        )
    )
