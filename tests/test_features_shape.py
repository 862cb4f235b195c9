"""Distribution-shape features (attribution/features_shape.py) on seeded synthetic windows with known physics
(tests/classifier_synth.py), the unrecorded-route evidence and reason, and the sparse-convention training copies."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from support.classifier_calls import calls

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.classifier.features import EpisodeContext, episode_features
from spanprism.attribution.classifier.reasons import pick_reason
from spanprism.attribution.classifier.shape import shape_features, unrecorded_dims
from spanprism.attribution.decomposition.decompose import decompose
from spanprism.attribution.evaluation.training_windows import LabelledWindow, as_recorded

ROUTES = ("region", "server_address")


def shape(base: pa.Table, epi: pa.Table) -> dict[str, float]:
    return shape_features(window_of(base), window_of(epi))


def hide(table: pa.Table, names: tuple[str, ...] = ROUTES) -> pa.Table:
    for name in names:
        i = table.column_names.index(name)
        table = table.set_column(i, name, pa.nulls(table.num_rows, table.schema.field(name).type))
    return table


def add_tail(table: pa.Table, ms: float) -> pa.Table:
    """A constant client-side delay after the last token: the span grows, TTFT and token count do not."""
    i = table.column_names.index("duration_ms")
    return table.set_column(i, "duration_ms", pc.add(table.column("duration_ms"), ms))


def test_partial_route_move_splits_itl_while_a_uniform_slowdown_shifts_it() -> None:
    """Half the calls on a slower backend: a two-speed mixture. Every call 1.5× slower: the same shape, moved."""
    base = calls(900, 1)
    moved = shape(base, calls(450, 2, t0_h=5, hours=2, west_share=0.5))
    uniform = shape(base, calls(450, 3, t0_h=5, hours=2, latency_scale=1.5))
    assert moved["itl_split_change"] > 0.15 > abs(uniform["itl_split_change"])
    assert moved["itl_spread_change"] > 0.2 > abs(uniform["itl_spread_change"])
    assert moved["itl_low_shift"] < -0.05 < uniform["itl_low_shift"]
    # Both push calls above the baseline's p90: that share alone cannot tell them apart.
    assert moved["itl_above_base_p90"] > 0.3 and uniform["itl_above_base_p90"] > 0.5


def test_the_split_does_not_need_the_route_columns() -> None:
    """The shape statistics read the per-call latencies only: hiding where the calls went changes nothing."""
    base, epi = calls(900, 4), calls(450, 5, t0_h=5, hours=2, west_share=0.5)
    seen, unseen = shape(base, epi), shape(hide(base), hide(epi))
    for name in ("itl_split_change", "itl_spread_change", "itl_low_shift", "log_net_rate_ratio"):
        assert seen[name] == unseen[name], name
    assert seen["route_unrecorded_share"] < unseen["route_unrecorded_share"]


def test_fixed_tail_moves_the_intercept_and_a_slower_decode_moves_the_rate() -> None:
    base = calls(900, 6)
    level = float(np.median(base.column("duration_ms").to_numpy()))
    hook = shape(base, add_tail(calls(450, 7, t0_h=5, hours=2), 0.8 * level))
    slower = shape(base, calls(450, 8, t0_h=5, hours=2, latency_scale=1.8))
    assert hook["fixed_tail_shift_rel"] > 0.5 and abs(hook["log_net_rate_ratio"]) < 0.1
    assert slower["log_net_rate_ratio"] > 0.4 and abs(slower["fixed_tail_shift_rel"]) < 0.15


def test_non_streaming_windows_still_get_the_net_rate() -> None:
    base = calls(900, 9, streaming=False)
    f = shape(base, add_tail(calls(450, 10, t0_h=5, hours=2, streaming=False), 900.0))
    assert f["itl_split_change"] == 0.0 and f["ttft_split_change"] == 0.0  # no per-call ITL/TTFT without streaming
    assert f["fixed_tail_shift_rel"] > 0.3 and abs(f["log_net_rate_ratio"]) < 0.1


def test_unrecorded_dimensions_become_flags_evidence_and_the_reason() -> None:
    base, epi = (
        hide(calls(900, 11), (*ROUTES, "deployment")),
        hide(calls(450, 12, t0_h=5, hours=2, latency_scale=1.6), (*ROUTES, "deployment")),
    )
    b, e = window_of(base), window_of(epi)
    assert unrecorded_dims(b, e) == ["region", "server_address", "deployment", "system_fingerprint"]
    f = episode_features(decompose(b, e, metric="itl_p95_ms"), b, e, EpisodeContext())
    assert f["unrecorded_deployment"] == 1.0 and f["unrecorded_response_model"] == 0.0
    assert f["route_unrecorded_share"] == 0.8
    # A route move nobody recorded: the mix of every recorded dimension is flat, so the reason is the hidden one.
    assert pick_reason("routing_change", f) == "deployment_change"
    b, e = window_of(calls(900, 11)), window_of(calls(450, 13, t0_h=5, hours=2, west_share=0.6))
    visible = episode_features(decompose(b, e), b, e)
    assert pick_reason("routing_change", visible) == "region_shift"


def test_sparse_convention_copies_are_seeded_and_hide_only_what_they_say() -> None:
    base, epi = calls(900, 14), calls(450, 15, t0_h=5, hours=2, latency_scale=1.5)
    w = LabelledWindow({"label": "batch_contention"}, base, epi, "e2e_p95_ms", EpisodeContext())
    a = [as_recorded(w, np.random.default_rng(7)) for _ in range(2)]
    assert a[0].baseline.equals(a[1].baseline) and a[0].metric == a[1].metric
    hidden = [
        n
        for n in base.column_names
        if a[0].baseline.column(n).null_count == base.num_rows and base.column(n).null_count < base.num_rows
    ]
    assert set(hidden) <= {
        "deployment",
        "region",
        "system_fingerprint",
        "server_address",
        "response_model",
        "queue_ms",
        "itl_ms",
    }
    # ITL rose 1.5× on every call: the detector would report ITL, and so does the copy.
    assert a[0].metric == "itl_p95_ms"
    copies = [as_recorded(w, np.random.default_rng(s)) for s in range(40)]
    assert sum(c.baseline.column("region").null_count > 0 for c in copies) in range(8, 33)
