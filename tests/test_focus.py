"""The focus of an episode window (attribution/classifier/focus.py) and the token gate of the own-traffic rule.

Seeded windows from the independent generator (``support.classifier_calls``): a change that covers only a stretch of
a wide window is found and attributed on its own calls; a window where nothing changed, or where only the series' own
output sizes grew, is left as detection placed it; "slower than the tokens explain" is a test whose power grows with
the calls.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from support.classifier_calls import T0, calls

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.classifier.focus import focus, token_residuals
from spanprism.attribution.classifier.model import load_default
from spanprism.attribution.classifier.own_traffic import TokenGrowth, beyond_tokens, own_traffic_label
from spanprism.attribution.decomposition.decompose import Decomposition


def _baseline(seed: int) -> pa.Table:
    return calls(150, seed, hours=24)  # a sparse series: ~6 calls an hour


def _wide_episode(seed: int, scale: float = 1.8) -> pa.Table:
    """16 h of calls; only 2 h of them (hours 8–10 after the start, 26 h after T0) are slower."""
    return pa.concat_tables([
        calls(50, seed, t0_h=26, hours=8),
        calls(40, seed + 1, t0_h=34, hours=2, latency_scale=scale),
        calls(40, seed + 2, t0_h=36, hours=6),
    ])  # fmt: skip


@pytest.mark.parametrize("seed", [1, 11, 21])
def test_a_short_change_in_a_wide_window_is_found_and_attributed_on_its_calls(seed: int) -> None:
    base, epi = window_of(_baseline(seed)), window_of(_wide_episode(seed + 100))
    found = focus(token_residuals(base, epi, "e2e_p95_ms"), epi)
    assert found is not None and found.statistic >= found.threshold
    start_h = (epi.start_s[found.first] - T0.timestamp()) / 3600
    end_h = (epi.start_s[found.last] - T0.timestamp()) / 3600
    assert 33.0 <= start_h <= 35.0 and 35.0 <= end_h <= 37.0, (start_h, end_h)
    att = load_default().attribute(_baseline(seed), _wide_episode(seed + 100), metric="e2e_p95_ms")
    rows = [row for row in att.evidence if row["signal"] == "focus_window"]
    assert len(rows) == 1 and rows[0]["calls"] == found.calls and rows[0]["of_calls"] == epi.n
    assert att.label == "batch_contention", att.probabilities


@pytest.mark.parametrize("seed", range(5))
def test_a_window_where_nothing_changed_is_not_narrowed(seed: int) -> None:
    base = window_of(_baseline(seed))
    epi = window_of(calls(200, seed + 50, t0_h=26, hours=30))
    assert focus(token_residuals(base, epi, "e2e_p95_ms"), epi) is None


def test_own_output_growth_across_the_window_is_neither_narrowed_nor_beyond_the_tokens() -> None:
    base = window_of(calls(150, 3, hours=24, output=300))
    epi = window_of(calls(120, 4, t0_h=26, hours=16, output=660))
    residuals = token_residuals(base, epi, "e2e_p95_ms")
    assert focus(residuals, epi) is None
    assert not beyond_tokens(residuals)


def test_beyond_the_tokens_needs_enough_calls_for_the_same_slowdown() -> None:
    """A 12 % slowdown at unchanged token sizes: 4 calls cannot tell it from noise, 300 calls can."""
    base = window_of(calls(300, 5, hours=48))
    few = window_of(calls(4, 6, t0_h=50, hours=2, latency_scale=1.12))
    many = window_of(calls(300, 7, t0_h=50, hours=24, latency_scale=1.12))
    assert not beyond_tokens(token_residuals(base, few, "e2e_p95_ms"))
    assert beyond_tokens(token_residuals(base, many, "e2e_p95_ms"))
    shift, z, n = token_residuals(base, many, "e2e_p95_ms").shift()
    assert n == 300 and shift == pytest.approx(np.log(1.12), abs=0.05) and z > 3


def _decomposition(contributions: dict[str, float]) -> Decomposition:
    change = sum(contributions.values())
    return Decomposition("e2e_p95_ms", 1000.0, 1000.0 + change, dict(contributions), {}, "batch_contention")


@pytest.mark.parametrize(("beyond", "expected"), [(True, "routing_change"), (False, "output_growth")])
def test_growth_overrides_a_provider_label_only_when_the_tokens_explain_the_slowdown(
    beyond: bool, expected: str
) -> None:
    d = _decomposition({"routing_change": 160.0, "output_growth": 350.0, "residual": 500.0})
    sizes = [TokenGrowth("output", 300.0, 700.0)]
    label, rows = own_traffic_label("routing_change", d, sizes, beyond_tokens=beyond)
    assert label == expected
    assert rows and rows[0]["tokens"] == "output"  # the growth is in the evidence either way


def test_a_burst_inside_a_window_that_moved_as_a_whole_is_not_the_focus() -> None:
    """The series' own prompts grew over the whole window (raw TTFT up everywhere, the token-adjusted residual
    not); 15 slow calls within 10 minutes inside it are not the change, so the window stays whole."""
    base = calls(150, 31, hours=24, user=1500, hit_rate=0.2)
    epi = pa.concat_tables([
        calls(60, 32, t0_h=26, hours=8, user=6000, hit_rate=0.2),
        calls(15, 33, t0_h=34, hours=1 / 6, user=6000, hit_rate=0.2, latency_scale=2.5),
        calls(60, 34, t0_h=34.5, hours=8, user=6000, hit_rate=0.2),
    ])  # fmt: skip
    b, e = window_of(base), window_of(epi)
    residuals = token_residuals(b, e, "ttft_p95_ms")
    assert focus(residuals, e) is None
    att = load_default().attribute(base, epi, metric="ttft_p95_ms")
    assert not [row for row in att.evidence if row["signal"] == "focus_window"]
    assert att.label == "prefill_growth", att.probabilities
