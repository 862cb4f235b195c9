"""The classifier's answer held to the per-call rates (``attribution/classifier/rate_checks.py``).

Rules on feature dicts (each side of each threshold), then seeded windows from the independent generator
(``support.classifier_calls``) through the shipped attributor: a queue in front of a series whose spans hide the
route is not a route move, and without TTFT a random wait is a queue while a constant one is a hook.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from support.classifier_calls import calls

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.classifier.features import episode_features
from spanprism.attribution.classifier.model import load_default
from spanprism.attribution.classifier.rate_checks import (
    CONSTANT_SPREAD,
    FIXED_DELAY,
    ITL_SPLIT,
    ITL_STILL,
    RANDOM_SPREAD,
    delay_kind,
    delay_label,
    route_unbacked,
)
from spanprism.attribution.decomposition.decompose import decompose

ROUTES = ("region", "server_address", "deployment", "response_model", "system_fingerprint")


def _hidden(table: pa.Table) -> pa.Table:
    for name in ROUTES:
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, name, pa.nulls(table.num_rows, table.schema.field(name).type))
    return table


def _delayed(table: pa.Table, ms: np.ndarray, *, ttft: bool) -> pa.Table:
    """Every call waits ``ms`` more (before the first token when ``ttft``): the span and, if so, TTFT grow."""
    for name in ("duration_ms", "ttft_ms") if ttft else ("duration_ms",):
        i = table.column_names.index(name)
        table = table.set_column(i, name, pc.add(table.column(name), pa.array(ms)))
    return table


STILL = {"streaming": 1.0, "tv_max": 0.0, "log_itl_ratio": 0.01, "itl_split_change": 0.02}


def test_a_hidden_route_move_needs_the_decode_rate_to_move() -> None:
    assert route_unbacked(STILL)
    assert not route_unbacked({**STILL, "log_itl_ratio": ITL_STILL + 0.05})  # decode slower: other hardware
    assert not route_unbacked({**STILL, "log_itl_ratio": -(ITL_STILL + 0.05)})
    assert not route_unbacked({**STILL, "itl_split_change": ITL_SPLIT + 0.05})  # two decode speeds: a partial move
    assert not route_unbacked({**STILL, "tv_max": 0.3})  # a recorded dimension moved: the mix is the evidence
    assert not route_unbacked({**STILL, "streaming": 0.0})  # no ITL measured: nothing to hold the answer to


NON_STREAMING = {"streaming": 0.0, "metric_ttft": 0.0, "metric_itl": 0.0, "fixed_tail_shift_rel": 0.4}


@pytest.mark.parametrize(
    ("spread", "kind"),
    [(RANDOM_SPREAD * 0.4 + 0.01, "random"), (CONSTANT_SPREAD * 0.4 - 0.01, "constant"), (0.4 * 0.17, None)],
)
def test_the_spread_of_a_fixed_delay_names_its_kind(spread: float, kind: str | None) -> None:
    assert delay_kind({**NON_STREAMING, "resid_spread_change": spread}) == kind


def test_the_delay_kind_only_speaks_where_it_can() -> None:
    random = {**NON_STREAMING, "resid_spread_change": 0.4}
    assert delay_kind({**random, "streaming": 1.0}) is None  # TTFT shows a queue directly
    assert delay_kind({**random, "fixed_tail_shift_rel": FIXED_DELAY / 2, "resid_spread_change": 0.2}) is None
    assert delay_label("unexplained", random) == "batch_contention"
    assert delay_label("batch_contention", {**NON_STREAMING, "resid_spread_change": 0.0}) == "unexplained"
    assert delay_label("routing_change", random) == "routing_change"  # only decides between the two it knows


def test_a_queue_before_the_first_token_is_not_a_hidden_route_move() -> None:
    """Streaming, route columns all NULL: a random admission wait before the first token, decode unchanged."""
    att = load_default()
    base = _hidden(calls(600, 11, hours=24))
    epi = _hidden(calls(200, 12, t0_h=26, hours=6))
    level = float(np.median(base.column("ttft_ms").to_numpy()))
    wait = np.random.default_rng(13).exponential(0.8 * level, epi.num_rows)
    epi = _delayed(epi, wait, ttft=True)
    b, e = window_of(base), window_of(epi)
    feats = episode_features(decompose(b, e, metric="ttft_p95_ms"), b, e)
    assert route_unbacked(feats), {k: feats[k] for k in STILL}
    a = att.attribute(base, epi, metric="ttft_p95_ms")
    assert a.label == "batch_contention", a.probabilities


@pytest.mark.parametrize(("random", "label"), [(True, "batch_contention"), (False, "unexplained")])
def test_without_ttft_a_random_wait_is_a_queue_and_a_constant_one_a_hook(random: bool, label: str) -> None:
    att = load_default()
    base = calls(600, 21, hours=24, streaming=False)
    epi = calls(200, 22, t0_h=26, hours=6, streaming=False)
    level = float(np.median(base.column("duration_ms").to_numpy()))
    rng = np.random.default_rng(23)
    wait = rng.exponential(0.6 * level, epi.num_rows) if random else np.full(epi.num_rows, 0.6 * level)
    a = att.attribute(base, _delayed(epi, wait, ttft=False), metric="e2e_p50_ms")
    assert a.label == label, a.probabilities
    # A random wait spreads the residuals by about its own size; a constant one shifts them and leaves the spread.
    if random:
        assert a.features["resid_spread_change"] > 0.5
    else:
        assert delay_kind(a.features) == "constant", a.features["resid_spread_change"]
