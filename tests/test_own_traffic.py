"""The series' own traffic as a cause (issue 11 item 3): longer prompts/outputs are prefill/output growth.

Seeded windows from the independent generator (``support.classifier_calls``), run through the shipped attributor end
to end, plus the rule itself on hand-built decompositions: growth that carries the change wins over a provider
mechanism, a real per-token slowdown that carries at least as much keeps its label, and the evidence names the token
change.
"""

from __future__ import annotations

import pytest
from support.classifier_calls import calls

from spanprism.attribution.classifier.model import load_default
from spanprism.attribution.classifier.own_traffic import TokenGrowth, own_traffic_label
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
