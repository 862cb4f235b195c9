"""The series' own traffic as a cause (issue 11 item 3): longer prompts/outputs are prefill/output growth.

Seeded windows from the independent generator (``support.classifier_calls``), run through the shipped attributor end
to end, plus the rule itself on hand-built decompositions: growth that carries the change wins over a provider
mechanism, a real per-token slowdown that carries at least as much keeps its label, and the evidence names the token
change.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.classifier_calls import calls

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.classifier.focus import token_residuals
from spanprism.attribution.classifier.model import load_default
from spanprism.attribution.classifier.own_traffic import (
    GROWTH_Z,
    TAIL_LEVEL,
    TokenGrowth,
    backed,
    beyond_tokens,
    own_traffic_label,
    rise_z,
    unsupported_growth,
    within_tokens,
)
from spanprism.attribution.decomposition.decompose import Decomposition


def _growth_rows(att) -> dict[str, dict]:
    return {row["tokens"]: row for row in att.evidence if row["signal"] == "own_token_growth"}


@pytest.mark.parametrize("streaming", [True, False])
def test_longer_prompts_at_unchanged_rates_are_prefill_growth_with_the_token_change(streaming: bool) -> None:
    att = load_default()
    base = calls(120, 1, hours=24, user=3000, hit_rate=0.2, streaming=streaming)  # a sparse series: 5 calls/h
    epi = calls(40, 2, t0_h=26, hours=8, user=9000, hit_rate=0.2, streaming=streaming)
    a = att.attribute(base, epi, metric="e2e_p95_ms")
    assert a.label == "prefill_growth", a.probabilities
    row = _growth_rows(a)["input"]
    assert row["observed"] > row["baseline"] and row["change_pct"] >= 25
    assert row["change_pct"] == pytest.approx(100 * (row["observed"] / row["baseline"] - 1), abs=0.01)
    assert a.reason in ("user_input_growth", "system_prompt_growth")


def test_outputs_twice_as_long_are_output_growth_not_decode_slowdown() -> None:
    att = load_default()
    base = calls(150, 3, hours=24, output=300)
    epi = calls(50, 4, t0_h=26, hours=8, output=660)  # 2.2× longer answers, same ITL
    a = att.attribute(base, epi, metric="e2e_p95_ms")
    assert (a.label, a.reason) == ("output_growth", None), a.probabilities
    row = _growth_rows(a)["output"]
    assert row["change_pct"] >= 80 and row["carried_ms"] > 0


def test_growth_plus_a_real_per_token_slowdown_stays_contention() -> None:
    att = load_default()
    base = calls(150, 5, hours=24, user=1500)
    epi = calls(60, 6, t0_h=26, hours=8, user=2000, latency_scale=2.0)  # prompts +~25 %, every rate doubled
    a = att.attribute(base, epi, metric="e2e_p95_ms")
    assert a.label == "batch_contention", a.probabilities


def test_unchanged_traffic_keeps_the_classifier_label() -> None:
    att = load_default()
    base = calls(150, 7, hours=24)
    epi = calls(60, 8, t0_h=26, hours=8, latency_scale=1.8)
    a = att.attribute(base, epi, metric="e2e_p95_ms")
    assert a.label == "batch_contention" and not _growth_rows(a)


def _decomposition(change: float, **contributions: float) -> Decomposition:
    rates = contributions.pop("rates", 0.0)
    booked = {k: 0.0 for k in ("prefill_growth", "cache_eviction", "batch_contention", "routing_change")}
    booked |= {"output_growth": 0.0, **contributions}
    booked["residual"] = change - sum(booked.values())
    return Decomposition("e2e_p95_ms", 1000.0, 1000.0 + change, booked, {"rates": rates}, "residual")


BOTH = {"input": (1000, 1300), "output": (100, 300)}


@pytest.mark.parametrize(
    ("label", "contributions", "sizes", "expected"),
    [
        # Prompts +60 % carry most of the change: a routing or contention guess becomes prefill growth.
        (
            "routing_change",
            {"prefill_growth": 300.0, "routing_change": 50.0},
            {"input": (1000, 1600)},
            "prefill_growth",
        ),
        ("batch_contention", {"prefill_growth": 300.0, "rates": 80.0}, {"input": (1000, 1600)}, "prefill_growth"),
        ("unexplained", {"output_growth": 150.0}, {"output": (200, 440)}, "output_growth"),
        (
            "cache_eviction",
            {"prefill_growth": 200.0, "cache_eviction": 20.0},
            {"uncached_input": (500, 800)},
            "prefill_growth",
        ),
        # A per-token slowdown (RATES) carrying more than the growth: still contention, even if booked to residual.
        ("batch_contention", {"prefill_growth": 100.0, "rates": 250.0}, {"input": (1000, 1400)}, "batch_contention"),
        (
            "routing_change",
            {"prefill_growth": 100.0, "routing_change": 200.0},
            {"input": (1000, 1400)},
            "routing_change",
        ),
        # Both grew: the one carrying more milliseconds, unless the classifier named one of them.
        ("unexplained", {"prefill_growth": 60.0, "output_growth": 240.0}, BOTH, "output_growth"),
        ("prefill_growth", {"prefill_growth": 60.0, "output_growth": 240.0}, BOTH, "prefill_growth"),
        ("prefill_growth", {"output_growth": 240.0}, {"output": (100, 300)}, "output_growth"),
        # Growth the decomposition books nothing to (outputs cannot move TTFT), or too small: no override.
        ("batch_contention", {"rates": 300.0}, {"output": (100, 300)}, "batch_contention"),
        ("routing_change", {"prefill_growth": 30.0, "routing_change": 10.0}, {"input": (1000, 1150)}, "routing_change"),
        # An unexplained change that a per-token slowdown carries more of than the growth stays unexplained.
        ("unexplained", {"prefill_growth": 150.0, "rates": 900.0}, {"input": (1000, 1300)}, "unexplained"),
        # Under 25 % but carrying at least half of the change: the decomposition decides.
        ("batch_contention", {"prefill_growth": 200.0, "rates": 50.0}, {"input": (1000, 1150)}, "prefill_growth"),
    ],
)
def test_growth_rule(label: str, contributions: dict, sizes: dict, expected: str) -> None:
    d = _decomposition(330.0, **contributions)
    got, rows = own_traffic_label(label, d, [TokenGrowth(k, *v) for k, v in sizes.items()])
    assert got == expected
    assert all(row["signal"] == "own_token_growth" and row["change_pct"] >= 10 for row in rows)


def test_system_prompt_growth_on_a_sparse_series_is_never_a_provider_mechanism() -> None:
    """30 seeded sparse windows (5 calls/h baseline, 30 calls in the episode) whose shared prefix grew by half."""
    att = load_default()
    labels = []
    for seed in range(10, 40):
        base = calls(100, seed, hours=24)
        epi = calls(30, seed + 1000, t0_h=26, hours=6, prefix=6000)
        labels.append(att.attribute(base, epi, metric="e2e_p95_ms").label)
    assert set(labels) <= {"prefill_growth", "output_growth"}, labels
    assert labels.count("prefill_growth") >= 0.8 * len(labels)


# -- call-count-aware growth (issue 11: sparse, drifting series) ------------------------------------------------------


def _sizes(n: int, seed: int, median: float, sigma: float = 1.0) -> np.ndarray:
    """Heavy-tailed token sizes (ln-normal, the spread of user prompts)."""
    return np.round(np.random.default_rng(seed).lognormal(np.log(median), sigma, n))


def test_a_median_that_moves_by_chance_on_few_calls_is_no_growth() -> None:
    """20 calls against 60 of the same size distribution: medians 25 % apart happen by chance, and the rise test
    says so for (nearly) every seed; the same 30 % rise on 600 calls each is growth."""
    chance_rises, flagged = 0, 0
    for seed in range(200):
        base, epi = _sizes(60, seed, 2000), _sizes(20, seed + 10_000, 2000)
        if np.median(epi) >= 1.25 * np.median(base):
            chance_rises += 1
            flagged += rise_z(base, epi) >= GROWTH_Z
    assert chance_rises >= 10  # the trap is real on this spread
    assert flagged <= 0.2 * chance_rises
    many = [rise_z(_sizes(600, s, 2000), _sizes(600, s + 100, 2600)) for s in range(20)]
    assert min(many) >= GROWTH_Z


def test_growth_of_the_longest_calls_alone_counts_for_a_tail_metric() -> None:
    """A quarter of the calls answer 4x longer: the mean ln size barely moves on 60 calls, the share of calls above
    the baseline's p90 does; a p95 metric sees that tail, a median metric does not need it."""
    rng = np.random.default_rng(5)
    base = _sizes(300, 6, 200, 0.4)
    epi = _sizes(60, 7, 200, 0.4) * np.where(rng.random(60) < 0.25, 4.0, 1.0)
    assert rise_z(base, epi, TAIL_LEVEL) >= GROWTH_Z
    assert rise_z(base, epi, TAIL_LEVEL) > rise_z(base, epi)


def test_a_growth_label_for_sizes_that_did_not_grow_is_barred() -> None:
    """The classifier may not answer output_growth when the outputs did not rise for the calls behind them, however
    many milliseconds the output group carries in a p95 of few calls."""
    d = _decomposition(330.0, output_growth=300.0)
    noisy = [TokenGrowth("output", 100.0, 140.0, z=0.8)]
    assert unsupported_growth(d, noisy) == {"prefill_growth", "output_growth"}
    assert own_traffic_label("routing_change", d, noisy) == ("routing_change", [])
    real = [TokenGrowth("output", 100.0, 140.0, z=4.0)]
    assert unsupported_growth(d, real) == {"prefill_growth"}


def test_the_next_answer_replaces_a_barred_growth_label() -> None:
    model = load_default().model
    probs = {c: 0.0 for c in model.classes} | {"output_growth": 0.7, "routing_change": 0.2, "batch_contention": 0.1}
    label, confidence = model.best_allowed(probs, {"output_growth", "prefill_growth"})
    assert label == "routing_change" and confidence == pytest.approx(2 / 3)
    assert model.best_allowed(probs, set(model.classes))[0] == "unexplained"


def test_calls_no_slower_than_their_sizes_make_a_small_prompt_rise_the_cause() -> None:
    """Prompts +15 % (a rise far below 25 %) on 400 calls with unchanged per-token rates: the token-adjusted residual
    rules out a slowdown beyond the sizes, so the rise explains the change and the RATES group is no contention."""
    base = calls(600, 41, hours=24, user=4000, hit_rate=0.0)
    epi = calls(400, 42, t0_h=26, hours=16, user=4600, hit_rate=0.0)
    b, e = window_of(base), window_of(epi)
    residuals = token_residuals(b, e, "ttft_p95_ms")
    assert within_tokens(residuals) and not beyond_tokens(residuals)
    d = _decomposition(200.0, prefill_growth=60.0, rates=140.0)
    sizes = [TokenGrowth("input", 5000.0, 5600.0, z=6.0)]
    assert own_traffic_label("batch_contention", d, sizes, within=True)[0] == "prefill_growth"
    # Without that evidence (a per-token slowdown cannot be ruled out) the RATES group keeps its contention reading.
    assert own_traffic_label("batch_contention", d, sizes, within=False)[0] == "batch_contention"
    slower = token_residuals(b, window_of(calls(400, 43, t0_h=26, hours=16, user=4600, hit_rate=0.0,
                                                latency_scale=1.5)), "ttft_p95_ms")  # fmt: skip
    assert not within_tokens(slower)


def test_a_second_answer_needs_a_slowdown_of_its_own() -> None:
    """Once a growth answer is barred, contention stands on a per-call slowdown or on the milliseconds booked to it,
    not on the RATES group of a p95's call mix."""
    mix = _decomposition(300.0, rates=200.0)  # RATES carries 2/3, nothing booked to contention
    assert not backed("batch_contention", mix)
    assert backed("batch_contention", mix, beyond_tokens=True)
    assert backed("batch_contention", _decomposition(300.0, batch_contention=200.0))
    assert backed("unexplained", mix)
