"""Closing a decomposition on the regression record (attribution/decomposition/closing.py): properties of the maths.

That every stored record of a simulated world closes is checked end to end in tests/test_cli_attribution.py.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spanprism.attribution.decomposition.closing import (
    MAX_RATIO,
    close_on,
    closes,
    scale_factor,
    split_evidence,
)
from spanprism.attribution.vocabulary import CONTRIBUTION_KEYS

ms = st.floats(min_value=-5_000, max_value=5_000, allow_nan=False, allow_infinity=False)
splits = st.fixed_dictionaries({k: ms for k in CONTRIBUTION_KEYS})


@settings(max_examples=400, deadline=None)
@given(splits, st.floats(min_value=-20_000, max_value=20_000, allow_nan=False))
def test_closed_contributions_always_sum_to_the_records_change(split, change):
    out = close_on(split, change)
    assert set(out) == set(split)
    assert math.fsum(out.values()) == pytest.approx(change, abs=1e-6)
    assert closes(out, 100.0, 100.0 + change)


@settings(max_examples=300, deadline=None)
@given(splits, st.floats(min_value=1 / MAX_RATIO, max_value=MAX_RATIO))
def test_a_nearby_change_keeps_every_mechanisms_share(split, ratio):
    split_change = math.fsum(split.values())
    if abs(split_change) < 1.0:  # a vanishing split change has no shares to keep
        return
    out = close_on(split, split_change * ratio)
    for key in CONTRIBUTION_KEYS:
        assert out[key] == pytest.approx(split[key] * ratio, abs=1e-6 * (1 + abs(split_change)))


@pytest.mark.parametrize(
    ("record_change", "why"),
    [(-300.0, "opposite sign"), (5_000.0, "more than MAX_RATIO times"), (100.0, "less than 1/MAX_RATIO")],
)
def test_a_far_change_books_the_gap_to_residual_and_keeps_the_mechanisms(record_change, why):
    split = {"prefill_growth": 900.0, "cache_eviction": 50.0, "batch_contention": 0.0, "routing_change": -20.0,
             "output_growth": 10.0, "residual": 60.0}  # fmt: skip
    assert scale_factor(1000.0, record_change) is None, why
    out = close_on(split, record_change)
    assert {k: v for k, v in out.items() if k != "residual"} == {k: v for k, v in split.items() if k != "residual"}
    assert out["residual"] == pytest.approx(60.0 + record_change - 1000.0)


def test_the_demo_sized_gap_is_scaled_and_the_evidence_says_so():
    split = {"prefill_growth": 1345.0, "cache_eviction": 0.0, "batch_contention": 0.0, "routing_change": -5.0,
             "output_growth": 0.0, "residual": 8.0}  # fmt: skip
    out = close_on(split, 1474.0)
    assert out["prefill_growth"] == pytest.approx(1345.0 * 1474.0 / 1348.0)
    assert math.fsum(out.values()) == pytest.approx(1474.0)
    row = split_evidence(1796.0, 3144.0, 1474.0)
    assert row == {"signal": "decomposed_metric", "baseline": 1796.0, "observed": 3144.0, "closed_by": "scaled",
                   "scale": round(1474.0 / 1348.0, 4)}  # fmt: skip
    assert split_evidence(1796.0, 3144.0, -10.0)["closed_by"] == "residual"


def test_closes_tolerates_rounding_only_and_is_vacuous_without_a_baseline():
    assert closes({"prefill_growth": 100.0005, "residual": -0.0004}, 10.0, 110.0)
    assert not closes({"prefill_growth": 100.0, "residual": 0.5}, 10.0, 110.0)
    assert not closes({}, 10.0, 110.0) and not closes(None, 10.0, 110.0)
    assert closes({"residual": 5.0}, None, 110.0) and closes({"residual": 5.0}, float("nan"), 110.0)
    assert close_on({"residual": 5.0}, float("nan")) == {"residual": 5.0}
