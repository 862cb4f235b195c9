"""Reason rules that read latency physics (attribution/reasons.py, attribution/features_shape.py):

* region vs deployment when the spans carry no region: a region move adds network round trip, a fixed delay on
  every call of the new hosts (the intercept of latency over tokens rises); a same-region deployment changes the
  per-token rates and keeps the intercept;
* system-prompt vs user-input growth without new prompt keys or cache data: a longer shared prefix adds the same
  tokens to every call (relatively less for large calls), longer user input scales the variable part.

Windows come from a small seeded generator with that physics (not the simulator in attribution/simulate.py).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.classifier.features import EpisodeContext, episode_features
from spanprism.attribution.classifier.reasons import PREFIX_TAPER, REGION_RTT_MS, pick_reason
from spanprism.attribution.classifier.shape import host_intercept_shift_ms, input_growth_taper
from spanprism.attribution.decomposition.decompose import decompose
from spanprism.models.schema import conform

T0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
#: host -> (region, network round trip ms, per-token speed multiplier)
HOSTS = {
    "eastus.example.com": ("eastus", 20.0, 1.0),
    "eastus-std2.example.com": ("eastus", 20.0, 1.7),  # other capacity in the same region: slower per token
    "westeurope.example.com": ("westeurope", 150.0, 1.1),  # across the Atlantic: longer path
    "westus.example.com": ("westus", 90.0, 1.0),
}


def window(
    n: int,
    seed: int,
    *,
    t0_h: float = 0.0,
    hosts: dict[str, float] | None = None,
    system: float = 3000.0,
    user: float = 1500.0,
    output: float = 200.0,
    streaming: bool = True,
    region_recorded: bool = True,
) -> pa.Table:
    """n calls over 4 h; ``hosts`` = host → share of calls. TTFT = (network + 0.08 ms · speed · input) · noise +
    an exponential queue; decode = 12 ms · speed · (output − 1) · noise."""
    rng = np.random.default_rng(seed)
    hosts = hosts or {"eastus.example.com": 1.0}
    names = list(hosts)
    host = np.array(names, dtype=object)[rng.choice(len(names), n, p=np.array(list(hosts.values())))]
    region, net, speed = (np.array([HOSTS[h][i] for h in host]) for i in range(3))
    inp = np.round(system + rng.lognormal(np.log(user), 0.6, n))
    out = np.maximum(2, np.round(rng.lognormal(np.log(output), 0.5, n)))
    ttft = (net + 0.08 * speed * inp) * rng.lognormal(0, 0.1, n) + rng.exponential(10.0, n)
    decode = 12.0 * speed * (out - 1) * rng.lognormal(0, 0.1, n)
    start = np.sort(rng.uniform(0, 4 * 3600, n)) + t0_h * 3600
    ids = rng.integers(0, 2**62, (n, 2))
    return conform(pa.table({
        "trace_id": [f"{a:016x}" for a in ids[:, 0]], "span_id": [f"{b:016x}" for b in ids[:, 1]],
        "service": ["rag"] * n, "provider": ["azure.ai.openai"] * n, "request_model": ["gpt-4o"] * n,
        "operation": ["chat"] * n, "response_model": ["gpt-4o-2024-08-06"] * n,
        "region": pa.array(region.tolist() if region_recorded else [None] * n, pa.string()),
        "server_address": host.tolist(), "prompt_key": ["tmpl@v1"] * n,
        "start_time": pa.array([T0 + dt.timedelta(seconds=float(s)) for s in start], pa.timestamp("us", tz="UTC")),
        "duration_ms": ttft + decode, "ttft_ms": pa.array(ttft if streaming else [None] * n, pa.float64()),
        "streaming": [streaming] * n, "status": ["ok"] * n,
        "input_tokens": inp.astype(np.int64), "output_tokens": out.astype(np.int64),
    }))  # fmt: skip


def features(base: pa.Table, epi: pa.Table) -> dict[str, float]:
    b, e = window_of(base), window_of(epi)
    return episode_features(decompose(b, e), b, e, EpisodeContext())


MOVES = {"region": "westeurope.example.com", "deployment": "eastus-std2.example.com"}


def intercept_shifts(seed: int, **kw: object) -> dict[str, float]:
    base = window(1200, seed, **kw)  # type: ignore[arg-type]
    shift = {}
    for i, (kind, host) in enumerate(MOVES.items()):
        epi = window(600, seed + 1 + i, t0_h=5, hosts={"eastus.example.com": 0.5, host: 0.5}, **kw)  # type: ignore[arg-type]
        shift[kind] = host_intercept_shift_ms(window_of(base), window_of(epi))
    return shift


@pytest.mark.parametrize("kw", [{"streaming": True}, {"streaming": False, "output": 20.0}])
def test_a_region_move_shifts_the_intercept_and_a_deployment_move_the_rate(kw: dict) -> None:
    shift = intercept_shifts(1, **kw)
    # The network adds 130 ms on the far host; the slower deployment adds per-token time, not a fixed delay.
    assert 90.0 < shift["region"] < 170.0
    assert abs(shift["deployment"]) < 0.5 * REGION_RTT_MS


def test_an_intercept_drowned_in_decode_noise_reads_as_no_shift() -> None:
    """Non-streaming calls with long answers: the duration is mostly noisy decode, the intercept is not measurable
    to within the region threshold, and a slower deployment must not pass for a longer network path."""
    for seed in (20, 30, 40):
        shift = intercept_shifts(seed, streaming=False, output=400.0)
        assert shift["deployment"] < REGION_RTT_MS
        assert shift["region"] == 0.0 or shift["region"] > REGION_RTT_MS


def test_without_a_region_on_the_spans_the_intercept_decides_region_vs_deployment() -> None:
    base = window(1200, 3, region_recorded=False)
    reasons = {}
    for i, (kind, host) in enumerate(MOVES.items()):
        epi = window(600, 4 + i, t0_h=5, hosts={"eastus.example.com": 0.4, host: 0.6}, region_recorded=False)
        f = features(base, epi)
        assert f["unrecorded_region"] == 1.0 and f["tv_region"] == 0.0 and f["tv_server_address"] > 0.5
        reasons[kind] = pick_reason("routing_change", f)
    assert reasons == {"region": "region_shift", "deployment": "deployment_change"}


def test_a_recorded_region_move_onto_a_nearer_but_slower_host_is_the_deployment() -> None:
    """Traffic leaves a far region for another deployment at home: the region mix moved, but a shorter network path
    cannot slow calls down; the per-token rate of the new host did."""
    base = window(1200, 6, hosts={"eastus.example.com": 0.4, "westus.example.com": 0.6})
    epi = window(600, 7, t0_h=5, hosts={"eastus.example.com": 0.4, "eastus-std2.example.com": 0.6})
    f = features(base, epi)
    assert f["tv_region"] > 0.5 and f["host_intercept_shift_ms"] <= -REGION_RTT_MS
    assert pick_reason("routing_change", f) == "deployment_change"
    # The same move onto the far region instead is the region.
    far = window(600, 8, t0_h=5, hosts={"eastus.example.com": 0.4, "westeurope.example.com": 0.6})
    assert pick_reason("routing_change", features(base, far)) == "region_shift"


def test_a_longer_system_prompt_tapers_and_longer_user_input_grows_with_size() -> None:
    """Same prompt key, no cache data: only the shape of the input growth tells the two apart."""
    base = window(1200, 9)
    system = window(600, 10, t0_h=5, system=5000.0)
    user = window(600, 11, t0_h=5, user=1500.0 * 2.3)
    assert input_growth_taper(window_of(base), window_of(system)) > PREFIX_TAPER
    assert input_growth_taper(window_of(base), window_of(user)) < 0.0
    fs, fu = features(base, system), features(base, user)
    # The growth is about the same size, and neither the keys nor the cache say which part grew.
    assert 0.3 < fs["d_input_rel"] < 0.6 and 0.3 < fu["d_input_rel"] < 0.6
    assert fs["new_prompt_key_share"] == fu["new_prompt_key_share"] == 0.0 == fs["d_cached_rel"]
    assert pick_reason("prefill_growth", fs) == "system_prompt_growth"
    assert pick_reason("prefill_growth", fu) == "user_input_growth"
