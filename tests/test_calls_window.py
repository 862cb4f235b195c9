"""The one call-window shape: which calls it keeps, how it resolves tokens, its two row orders and its routes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from spanprism.attribution.calls_window import NULL_MARK, varying_route_dims, window_of

T0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


def rows(n: int = 40, seed: int = 0) -> pa.Table:
    """n ok calls with ids out of time order, two regions and a few NULL token counts."""
    rng = np.random.default_rng(seed)
    return pa.table({
        "trace_id": [f"{x:032x}" for x in rng.permutation(n)],
        "span_id": [f"{i:016x}" for i in range(n)],
        "start_time": [T0 + dt.timedelta(seconds=float(s)) for s in rng.uniform(0, 3600, n)],
        "duration_ms": rng.uniform(500, 900, n),
        "ttft_ms": rng.uniform(100, 200, n),
        "status": ["ok"] * n,
        "region": rng.choice(["eastus", "westus"], n).tolist(),
        "input_tokens": pa.array(rng.integers(1000, 2000, n), pa.int64()),
        "cache_read_tokens": pa.array([None if i % 5 == 0 else 400 for i in range(n)], pa.int64()),
        "uncached_input_tokens": pa.array([None if i % 10 == 0 else 600 for i in range(n)], pa.int64()),
        "output_tokens": pa.array(rng.integers(50, 300, n), pa.int64()),
    })  # fmt: skip


def test_keeps_ok_calls_with_a_duration_and_resolves_tokens_once():
    t = rows(6)
    t = t.set_column(t.column_names.index("status"), "status", pa.array(["ok", "error", None, "ok", "ok", "ok"]))
    t = t.set_column(3, "duration_ms", pa.array([1.0, 2.0, 3.0, None, float("nan"), 6.0]))
    w = window_of(t)
    assert sorted(w.duration.tolist()) == [1.0, 3.0, 6.0]  # NULL status counts as ok; NULL/NaN duration does not
    inp = dict(zip(w.duration.tolist(), w.input.tolist(), strict=True))
    cached = dict(zip(w.duration.tolist(), w.cached.tolist(), strict=True))
    # Row 0: cache and uncached NULL → cache unknown, 0, counted. Row 5: cache NULL, recovered as input − uncached.
    assert cached[1.0] == 0.0 and w.cache_imputed == 1
    assert cached[6.0] == inp[6.0] - 600
    assert np.all(w.cached <= w.input) and w.cache_known


def test_row_order_never_matters_and_by_id_is_the_id_order():
    t = rows()
    w, shuffled = window_of(t), window_of(t.take(np.random.default_rng(1).permutation(t.num_rows)))
    for name in ("duration", "input", "cached", "start_s", "trace_id", "route_key"):
        assert np.array_equal(getattr(w, name), getattr(shuffled, name))
    assert np.all(np.diff(w.start_s) >= 0)
    by_id = w.in_id_order()
    assert by_id.trace_id.tolist() == sorted(w.trace_id.tolist())
    # A subset keeps the id order of what it kept, whichever order it was taken from.
    mask = w.duration > np.median(w.duration)
    assert by_id.take(np.isin(by_id.span_id, w.span_id[mask])).span_id.tolist() == (
        w.take(mask).in_id_order().span_id.tolist()
    )


def test_routes_use_one_null_marker_and_the_domain_counts_error_calls():
    base, epi = rows(20, 2), rows(20, 3)
    base = base.set_column(base.column_names.index("region"), "region", pa.array(["eastus"] * 20))
    epi = epi.set_column(epi.column_names.index("region"), "region", pa.array(["eastus"] * 19 + [None]))
    epi = epi.set_column(epi.column_names.index("status"), "status", pa.array(["ok"] * 19 + ["error"]))
    b, e = window_of(base), window_of(epi)
    assert set(e.routes["region"]) == {"eastus"}  # the NULL-region call is an error: not in the window ...
    assert varying_route_dims(b, e) == ["region"]  # ... but its route still counts (as the stored rows show it)
    assert set(e.route_key_over(["region"])) == {"region=eastus"}
    assert set(b.route_key_over([])) == {"all"}
    assert set(b.routes["deployment"]) == {NULL_MARK} and not b.has_prompt_key
    assert varying_route_dims(b, b) == []


@pytest.mark.parametrize("column", ["start_time", "trace_id"])
def test_missing_columns_read_as_null(column):
    w = window_of(rows().drop_columns([column]))
    assert w.n == 40
    if column == "start_time":
        assert not w.start_known and w.start_s.tolist() == list(range(40))
    else:
        assert set(w.trace_id) == {NULL_MARK}
