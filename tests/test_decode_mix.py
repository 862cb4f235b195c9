"""Two decode speeds between neighbouring calls (``attribution/classifier/decode_mix.py``) and the route check that
reads them (``rate_checks.route_mixed``).

Rules on feature dicts (each side of the threshold), then seeded windows from the independent generator
(``support.classifier_calls``) with the route columns NULL: a share of the calls served by a slower backend makes
neighbouring calls jump between two decode speeds; a crowded batch (every call slower, also when it ramps up over
the window) and an admission queue do not, and stay contention through the shipped attributor.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from support.classifier_calls import calls

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.classifier.decode_mix import MIN_CALLS, itl_jump_change
from spanprism.attribution.classifier.model import load_default
from spanprism.attribution.classifier.rate_checks import ITL_JUMP, ITL_SPLIT, mixed_label, route_mixed

ROUTES = ("region", "server_address", "deployment", "response_model", "system_fingerprint")


def _hidden(table: pa.Table) -> pa.Table:
    for name in ROUTES:
        i = table.column_names.index(name)
        table = table.set_column(i, name, pa.nulls(table.num_rows, table.schema.field(name).type))
    return table


def _slowed(table: pa.Table, decode: np.ndarray, ttft: np.ndarray) -> pa.Table:
    """Per call: TTFT ``ttft`` times and the decode (what follows the first token) ``decode`` times longer."""
    first = table.column("ttft_ms").to_numpy()
    rest = table.column("duration_ms").to_numpy() - first
    table = table.set_column(table.column_names.index("ttft_ms"), "ttft_ms", pa.array(first * ttft))
    return table.set_column(
        table.column_names.index("duration_ms"), "duration_ms", pa.array(first * ttft + rest * decode)
    )


MIXED = {"streaming": 1.0, "itl_jump_change": ITL_JUMP + 0.05, "itl_split_change": ITL_SPLIT + 0.05}


def test_two_decode_speeds_in_turn_make_a_contention_answer_a_route_move() -> None:
    assert route_mixed(MIXED)
    assert mixed_label("batch_contention", MIXED) == "routing_change"
    assert not route_mixed({**MIXED, "itl_jump_change": ITL_JUMP - 0.05})  # neighbours slowed alike: contention
    # Jumps without two speeds: a random wait on a few calls, not a second backend.
    assert not route_mixed({**MIXED, "itl_split_change": ITL_SPLIT - 0.05})
    assert not route_mixed({**MIXED, "streaming": 0.0})  # no ITL measured: nothing to read
    assert mixed_label("batch_contention", {**MIXED, "itl_jump_change": 0.0}) == "batch_contention"
    # Only a contention answer is checked: an unexplained delay (a client hook) can make a derived ITL jump too.
    assert mixed_label("unexplained", MIXED) == "unexplained"
    assert mixed_label("cache_eviction", MIXED) == "cache_eviction"


@pytest.mark.parametrize("seed", [31, 41, 51])
def test_a_share_on_a_slower_backend_makes_neighbouring_calls_jump(seed: int) -> None:
    """40 % of the episode's calls decode 1.7x slower (another deployment), route columns NULL: two speeds, in turn."""
    base = _hidden(calls(600, seed, hours=24))
    epi = _hidden(calls(200, seed + 1, t0_h=26, hours=6))
    moved = np.random.default_rng(seed + 2).random(epi.num_rows) < 0.4
    epi = _slowed(epi, np.where(moved, 1.7, 1.0), np.where(moved, 1.1, 1.0))
    assert itl_jump_change(window_of(base), window_of(epi)) >= ITL_JUMP
    a = load_default().attribute(base, epi, metric="itl_p95_ms")
    feats = a.features
    assert route_mixed(feats), (feats["itl_jump_change"], feats["itl_split_change"])
    assert mixed_label("batch_contention", feats) == "routing_change"
    # The reader sees the jump next to the split it goes with.
    shown = {row["signal"]: row["observed"] for row in a.evidence}
    assert shown["feature:itl_jump_change"] == pytest.approx(feats["itl_jump_change"], abs=1e-6)


@pytest.mark.parametrize("seed", [31, 41, 51])
def test_contention_slows_neighbouring_calls_alike(seed: int) -> None:
    """A crowded batch ramping from 1x to 2x decode over the episode and an admission queue: every call in flight
    at a moment is slowed alike, so the call-to-call jump stays within noise and the check leaves a contention
    answer alone (on the features the shipped attributor computed)."""
    att = load_default()
    base = _hidden(calls(600, seed, hours=24))
    epi = _hidden(calls(200, seed + 1, t0_h=26, hours=6))
    n = epi.num_rows
    ramp = np.linspace(1.0, 2.0, n)  # rows are in start-time order
    crowded = _slowed(epi, ramp, np.ones(n))
    wait = 1.0 + np.random.default_rng(seed + 3).exponential(0.8, n)
    queued = _slowed(epi, np.full(n, 1.12), wait)
    b = window_of(base)
    for e, metric in ((crowded, "itl_p95_ms"), (queued, "ttft_p95_ms")):
        assert abs(itl_jump_change(b, window_of(e))) < ITL_JUMP
        feats = att.attribute(base, e, metric=metric).features
        assert not route_mixed(feats), feats["itl_jump_change"]
        assert mixed_label("batch_contention", feats) == "batch_contention"


def test_the_jump_needs_enough_streaming_calls() -> None:
    base = _hidden(calls(600, 61, hours=24))
    few = _hidden(calls(MIN_CALLS - 1, 62, t0_h=26, hours=6))
    few = _slowed(few, np.tile([1.0, 2.0], MIN_CALLS)[: few.num_rows], np.ones(few.num_rows))
    assert itl_jump_change(window_of(base), window_of(few)) == 0.0
    flat = calls(200, 63, t0_h=26, hours=6, streaming=False)
    assert itl_jump_change(window_of(calls(600, 61, hours=24, streaming=False)), window_of(flat)) == 0.0
