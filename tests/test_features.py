"""Episode features of the attribution classifier on seeded synthetic windows with known physics
(tests/classifier_synth.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from support.classifier_calls import calls

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.classifier.features import (
    EVIDENCE_ONLY,
    FEATURE_NAMES,
    EpisodeContext,
    context_from_episodes,
    episode_features,
    feature_vector,
)
from spanprism.attribution.classifier.windows import route_tv
from spanprism.attribution.decomposition.decompose import decompose


def feats(base: pa.Table, epi: pa.Table, metric: str = "e2e_p95_ms", **kw: object) -> dict[str, float]:
    b, e = window_of(base), window_of(epi)
    return episode_features(decompose(b, e, metric=metric), b, e, **kw)  # type: ignore[arg-type]


def test_every_feature_is_named_finite_and_ordered() -> None:
    f = feats(calls(800, 1), calls(400, 2, t0_h=5, hours=2, user=4000))
    assert tuple(f) == FEATURE_NAMES + EVIDENCE_ONLY
    assert np.all(np.isfinite(feature_vector(f)))
    assert feature_vector({}).shape == (len(FEATURE_NAMES),)


def test_latency_units_do_not_matter() -> None:
    """Scale-free: the same episode measured 7× slower everywhere gives the same features."""
    base, epi = calls(900, 3), calls(450, 4, t0_h=5, hours=2, user=3500)
    slow_b, slow_e = calls(900, 3, latency_scale=7.0), calls(450, 4, t0_h=5, hours=2, user=3500, latency_scale=7.0)
    a, b = feats(base, epi), feats(slow_b, slow_e)
    for name in FEATURE_NAMES:
        assert a[name] == pytest.approx(b[name], abs=0.02), name


def test_row_order_does_not_matter() -> None:
    base, epi = calls(600, 5), calls(300, 6, t0_h=5, hours=2, hit_rate=0.3)
    perm_b = base.take(np.random.default_rng(0).permutation(base.num_rows))
    perm_e = epi.take(np.random.default_rng(1).permutation(epi.num_rows))
    assert feats(base, epi) == feats(perm_b, perm_e)


def test_prompt_growth_lowers_the_ratio_but_not_the_cached_tokens() -> None:
    """The trap: a longer user part lowers the cache-read ratio while cache-read tokens stay where they were."""
    f = feats(calls(900, 7), calls(450, 8, t0_h=5, hours=2, user=6000), metric="ttft_p95_ms")
    assert f["cache_ratio_change"] < -0.1
    assert abs(f["d_cached_rel"]) < 0.03 and abs(f["log_cached_ratio"]) < 0.05
    assert f["d_uncached_rel"] > 0.5 and f["log_input_ratio"] > 0.3
    assert f["share_prefill_growth"] > 0.5 > f["share_cache_eviction"]


def test_eviction_moves_cached_tokens_at_the_same_prompt_size() -> None:
    f = feats(calls(900, 9), calls(450, 10, t0_h=5, hours=2, hit_rate=0.2))
    assert f["hit_rate_change"] < -0.5 and f["d_cached_rel"] < -0.3
    assert abs(f["d_input_rel"]) < 0.05
    assert f["d_uncached_rel"] == pytest.approx(-f["d_cached_rel"], abs=0.05)
    assert f["miss_on_grown_routes"] == 0.0  # no route grew: every route lost its cache


def test_route_shift_with_a_cold_new_route() -> None:
    """Misses concentrate on the route that grew; the routes that stayed keep their hit rate."""
    base = calls(900, 11)
    epi = calls(450, 12, t0_h=5, hours=2, west_share=0.6, west_hit_rate=0.1)
    f = feats(base, epi)
    assert f["tv_region"] == pytest.approx(0.6, abs=0.08)
    assert f["tv_server_address"] == pytest.approx(f["tv_region"])
    assert f["new_route_share"] == pytest.approx(0.6, abs=0.08)
    assert f["miss_on_grown_routes"] > 0.6
    assert abs(f["hit_rate_change"]) < 0.1 and abs(f["d_cached_rel"]) < 0.03  # measured on the routes that stayed
    assert f["tv_response_model"] == 0.0 and f["new_response_model_share"] == 0.0


def test_per_call_prefixes_and_sparse_calls() -> None:
    base = calls(900, 13, hours=4)
    changed = feats(base, calls(450, 14, t0_h=5, hours=2, unique_key_share=0.5))
    assert changed["single_use_key_change"] == pytest.approx(0.5, abs=0.08)
    assert changed["new_prompt_key_share"] == pytest.approx(0.5, abs=0.08)
    assert changed["new_key_repeat_share"] == 0.0
    # 60 calls over 4 h fanned out over 30 prompt variants: each variant is seen every ~2 h.
    sparse = feats(base, calls(60, 15, t0_h=5, hours=4, keys=30))
    assert sparse["gap_5m_change"] > 0.5
    assert sparse["new_key_repeat_share"] > 0.5


def test_unknown_cache_and_prompt_keys_give_zeros_not_errors() -> None:
    drop = ["cache_read_tokens", "uncached_input_tokens", "prompt_key"]
    base, epi = calls(500, 16).drop_columns(drop), calls(300, 17, t0_h=5, hours=2, user=3000).drop_columns(drop)
    f = feats(base, epi)
    for name in ("cache_ratio_change", "hit_rate_change", "new_prompt_key_share", "gap_5m_change"):
        assert f[name] == 0.0


def test_non_streaming_windows() -> None:
    base, epi = calls(700, 18, streaming=False), calls(350, 19, t0_h=5, hours=2, output=500, streaming=False)
    f = feats(base, epi)
    assert f["streaming"] == 0.0 and f["log_itl_ratio"] == 0.0 and f["log_ttft_ratio"] == 0.0
    assert f["log_output_ratio"] > 0.6 and f["share_output_growth"] > 0.6


def test_context_counts_regressed_peers_of_the_same_provider_and_region() -> None:
    others = [
        ("openai", "eastus", 100.0, 200.0, True),  # overlapping peer
        ("openai", "eastus", 300.0, 400.0, True),  # regressed, but later
        ("openai", "eastus", 0.0, 0.0, False),  # quiet peer
        ("openai", "westeurope", 100.0, 200.0, True),  # other region
        ("anthropic", "eastus", 100.0, 200.0, True),  # other provider
    ]
    ctx = context_from_episodes(("openai", "eastus", 150.0, 250.0), others)
    assert (ctx.peers, ctx.peers_regressed) == (3, 1)
    assert ctx.regressed_share == pytest.approx(1 / 3)
    assert EpisodeContext().regressed_share == 0.0
    base, epi = calls(400, 20), calls(200, 21, t0_h=5, hours=2, latency_scale=1.5)
    f = feats(base, epi, context=ctx)
    assert f["peer_regressed"] == 1.0 and f["peer_regressed_share"] == pytest.approx(1 / 3)


def test_window_helpers() -> None:
    w = window_of(calls(50, 22, hours=1))
    assert w.n == 50 and np.all(np.diff(w.start_s) >= 0)
    assert w.hours == pytest.approx(1.0, abs=0.15)
    a = np.array(["x", "x", "y", "y"], dtype=object)
    assert route_tv(a, a) == 0.0
    assert route_tv(a, np.array(["z", "z"], dtype=object)) == 1.0
