"""The latency decomposition on seeded synthetic calls generated from the physics.

Physics of the generator: a prompt is a cacheable prefix (system prompt + tools) plus a dynamic part (RAG chunks,
history); a cache hit reads the prefix. TTFT = (network_r + queue + prefill_r·uncached + 0.1·prefill_r·cached) ·
lognormal noise; decode = ITL_r · lognormal · (output − 1); duration = TTFT + decode. Routes differ in network,
prefill rate and ITL ("slow" is a far region on older hardware).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.decomposition.decompose import Decomposition, parse_metric
from spanprism.attribution.decomposition.decompose import decompose as decompose_windows
from spanprism.attribution.decomposition.shapley import exact_shapley, quantile_coupling, weighted_quantile
from spanprism.attribution.vocabulary import CONTRIBUTION_KEYS
from spanprism.models.schema import conform

GOLDEN = Path(__file__).parent / "golden" / "decompose"
#: name → (region, network ms, prefill ms per uncached token, ITL ms)
ROUTES = {
    "east": ("eastus", 150.0, 0.10, 10.0),
    "west": ("westus", 200.0, 0.12, 12.0),
    "slow": ("swedencentral", 400.0, 0.20, 22.0),
}
BASE_MIX = {"east": 0.57, "west": 0.38, "slow": 0.05}
CACHED_COST = 0.1  # a cached prompt token costs a tenth of an uncached one


def decompose(base: pa.Table, epi: pa.Table, **kw: object) -> Decomposition:
    """Decompose two windows given as llm_calls rows (each built into its call window, as the classifier does)."""
    return decompose_windows(window_of(base), window_of(epi), **kw)  # type: ignore[arg-type]


def make_calls(
    n: int,
    seed: int,
    *,
    mix: dict[str, float] | None = None,
    prefix: int = 6000,
    dynamic: float = 2500.0,
    hit_rate: float = 0.9,
    output: float = 150.0,
    itl_mult: float | dict[str, float] = 1.0,
    queue_ms: float = 0.0,
    streaming: bool = True,
    cache_known: bool = True,
    status_error_rate: float = 0.0,
) -> pa.Table:
    """n canonical llm_calls rows of one series following the physics in the module docstring."""
    rng = np.random.default_rng(seed)
    mix = mix or BASE_MIX
    names = list(mix)
    pick = rng.choice(len(names), n, p=np.array(list(mix.values())) / sum(mix.values()))
    route = [names[i] for i in pick]
    region = [ROUTES[r][0] for r in route]
    net, prefill, itl = (np.array([ROUTES[r][k] for r in route]) for k in (1, 2, 3))
    per_route = itl_mult if isinstance(itl_mult, dict) else dict.fromkeys(ROUTES, itl_mult)
    itl = itl * np.array([per_route.get(r, 1.0) for r in route])
    inp = (prefix + np.round(rng.lognormal(np.log(dynamic), 0.6, n))).astype(np.int64)
    cached = np.where(rng.random(n) < hit_rate, prefix, 0).astype(np.int64)
    out = np.maximum(1, np.round(rng.lognormal(np.log(output), 0.5, n))).astype(np.int64)
    ttft = (net + queue_ms + prefill * (inp - cached) + prefill * CACHED_COST * cached) * rng.lognormal(0, 0.25, n)
    gap = itl * rng.lognormal(0, 0.15, n)
    decode = gap * (out - 1)
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    ids = rng.integers(0, 2**62, (n, 3))
    none = [None] * n
    return conform(
        pa.table(
            {
                "trace_id": [f"{a:016x}{b:016x}" for a, b in ids[:, :2]],
                "span_id": [f"{c:016x}" for c in ids[:, 2]],
                "service": ["rag"] * n,
                "provider": ["azure.ai.openai"] * n,
                "request_model": ["gpt-4o"] * n,
                "operation": ["chat"] * n,
                "response_model": ["gpt-4o-2024-08-06"] * n,
                "region": region,
                "server_address": [f"{r}.example.com" for r in region],
                "start_time": [t0 + dt.timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 3600, n))],
                "duration_ms": ttft + decode,
                "ttft_ms": ttft if streaming else none,
                "decode_ms": decode if streaming else none,
                "itl_ms": gap if streaming else none,
                "streaming": [streaming] * n,
                "status": np.where(rng.random(n) < status_error_rate, "error", "ok"),
                "input_tokens": inp,
                "cache_read_tokens": cached if cache_known else pa.nulls(n, pa.int64()),
                "uncached_input_tokens": inp - cached if cache_known else pa.nulls(n, pa.int64()),
                "output_tokens": out,
            }
        )
    )


def constant_tokens(table: pa.Table) -> pa.Table:
    """Every call with the same prompt and completion size (a load-test shape, e.g. LLMPerf's 550 in / 150 out)."""
    for name, value in (
        ("input_tokens", 550),
        ("cache_read_tokens", 0),
        ("uncached_input_tokens", 550),
        ("output_tokens", 150),
    ):
        table = table.set_column(
            table.schema.get_field_index(name), name, pa.array([value] * table.num_rows, pa.int64())
        )
    return table


def null_columns(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    for name in names:
        field = table.schema.field(name)
        table = table.set_column(table.schema.get_field_index(name), field, pa.nulls(table.num_rows, field.type))
    return table


def drop_ttft(table: pa.Table, fraction: float) -> pa.Table:
    """The first ``fraction`` of the rows lose their TTFT (an instrumentation that only sometimes sees the stream)."""
    cut = int(table.num_rows * fraction)
    ttft = pa.array([None] * cut + table.column("ttft_ms").to_pylist()[cut:], pa.float64())
    return table.set_column(table.schema.get_field_index("ttft_ms"), "ttft_ms", ttft)


def share(d, label: str) -> float:
    return d.contributions_ms[label] / (d.observed_value - d.baseline_value)


MECHANISMS = [
    ("prefill_growth", dict(dynamic=5000.0)),
    ("prefill_growth", dict(dynamic=7500.0)),
    ("cache_eviction", dict(hit_rate=0.4)),
    ("cache_eviction", dict(hit_rate=0.1)),
    ("batch_contention", dict(itl_mult=1.3)),
    ("batch_contention", dict(itl_mult=1.5)),
    ("batch_contention", dict(queue_ms=400.0)),
    ("batch_contention", dict(queue_ms=800.0)),
    ("routing_change", dict(mix={"east": 0.4, "west": 0.25, "slow": 0.35})),
    ("routing_change", dict(mix={"east": 0.25, "west": 0.15, "slow": 0.6})),
    ("output_growth", dict(output=225.0)),
    ("output_growth", dict(output=300.0)),
]


@pytest.mark.parametrize("seed", [11, 12])
@pytest.mark.parametrize(("label", "change"), MECHANISMS)
def test_pure_mechanism_lands_in_its_bucket(label, change, seed):
    d = decompose(make_calls(4000, seed), make_calls(1500, seed + 100, **change), seed=seed)
    assert d.observed_value > d.baseline_value
    assert share(d, label) > 0.6, d.contributions_ms
    assert max(d.contributions_ms, key=d.contributions_ms.get) == label


TTFT_MECHANISMS = [m for m in MECHANISMS if m[0] not in ("output_growth",) and "itl_mult" not in m[1]]


@pytest.mark.parametrize(("label", "change"), TTFT_MECHANISMS)
def test_ttft_metric_mechanisms(label, change):
    d = decompose(make_calls(4000, 21), make_calls(1500, 22, **change), metric="ttft_p95_ms", seed=3)
    assert share(d, label) > 0.6, d.contributions_ms


@pytest.mark.parametrize(("label", "change"), [m for i, m in enumerate(MECHANISMS) if i % 2])
def test_non_streaming_series(label, change):
    base, epi = make_calls(4000, 31, streaming=False), make_calls(1500, 32, streaming=False, **change)
    d = decompose(base, epi)
    assert d.model_fit["kind"] == "non_streaming"
    assert share(d, label) > 0.6, d.contributions_ms
    assert next(r for r in d.evidence if r["signal"] == "duration_residual_p50_ms")["observed"] is not None


def test_trap_longer_prompts_lower_the_ratio_without_eviction():
    """RAG pulls more chunks: cache-read tokens stay, the cache-read RATIO falls — that is prefill, not eviction."""
    d = decompose(make_calls(4000, 41), make_calls(1500, 42, dynamic=7500.0), seed=1)
    ev = {r["signal"]: r for r in d.evidence}
    assert ev["cache_read_ratio"]["baseline"] - ev["cache_read_ratio"]["observed"] > 0.15
    assert ev["cache_read_tokens_p50"]["baseline"] == ev["cache_read_tokens_p50"]["observed"]
    assert share(d, "prefill_growth") > 0.6
    assert abs(share(d, "cache_eviction")) < 0.1, d.contributions_ms


def test_traffic_onto_an_unseen_route_is_routing_not_rates():
    base = make_calls(4000, 51, mix={"east": 0.6, "west": 0.4})
    d = decompose(base, make_calls(1500, 52, mix={"east": 0.3, "west": 0.2, "slow": 0.5}))
    assert share(d, "routing_change") > 0.6
    assert abs(d.group_effects_ms["rates"]) < 0.1 * (d.observed_value - d.baseline_value)
    tv = next(r for r in d.evidence if r["signal"] == "route_tv_region")["observed"]
    assert tv == pytest.approx(0.5, abs=0.05)


def test_slowdown_on_one_route_only_is_not_contention():
    d = decompose(make_calls(4000, 61), make_calls(1500, 62, itl_mult={"east": 1.8}))
    assert d.rates_label == "residual"
    assert d.contributions_ms["batch_contention"] == 0.0
    assert share(d, "residual") > 0.6


@pytest.mark.parametrize("metric", ["e2e_p95_ms", "e2e_p50_ms", "e2e_mean_ms", "ttft_p99_ms", "itl_p95_ms"])
def test_efficiency_sum_is_exactly_the_change(metric):
    epi = make_calls(
        1500,
        72,
        dynamic=4000.0,
        hit_rate=0.6,
        itl_mult=1.2,
        output=180.0,
        mix={"east": 0.4, "west": 0.3, "slow": 0.3},
        status_error_rate=0.02,
    )
    d = decompose(make_calls(4000, 71, status_error_rate=0.02), epi, metric=metric)
    assert tuple(d.contributions_ms) == CONTRIBUTION_KEYS
    assert sum(d.contributions_ms.values()) == pytest.approx(d.observed_value - d.baseline_value, abs=1e-6)
    # The coupled synthetic calls reproduce both windows, so v(∅) and v(all) are the two metric values.
    assert d.model_fit["synthetic_baseline"] == pytest.approx(d.baseline_value, rel=1e-9)
    assert d.model_fit["synthetic_observed"] == pytest.approx(d.observed_value, rel=1e-9)


def test_no_change_gives_near_zero_contributions():
    for seed in (81, 82, 83):
        d = decompose(make_calls(4000, seed), make_calls(1500, seed + 100), seed=seed)
        for label, value in d.contributions_ms.items():
            assert abs(value) < 0.05 * d.baseline_value, (label, d.contributions_ms)


def test_row_order_and_player_order_do_not_matter():
    base, epi = make_calls(2000, 91), make_calls(800, 92, hit_rate=0.3, queue_ms=200.0)
    rng = np.random.default_rng(0)
    shuffled = (base.take(rng.permutation(base.num_rows)), epi.take(rng.permutation(epi.num_rows)))
    assert decompose(base, epi, seed=5).to_dict() == decompose(*shuffled, seed=5).to_dict()

    def value(mask: int) -> float:  # a non-additive game: interactions must be split symmetrically
        x = [(mask >> i) & 1 for i in range(4)]
        return 3 * x[0] + 2 * x[1] * x[2] + x[3] * (x[0] + x[1]) ** 2

    phi = exact_shapley(value, 4)
    perm = [2, 0, 3, 1]

    def permuted(mask: int) -> float:
        return value(sum(1 << perm[i] for i in range(4) if mask >> i & 1))

    assert np.allclose(exact_shapley(permuted, 4), phi[perm])
    assert phi.sum() == pytest.approx(value(15) - value(0))


def test_deterministic_for_a_seed_and_json_serialisable():
    base, epi = make_calls(1500, 101), make_calls(600, 102, dynamic=6000.0)
    first = decompose(base, epi, seed=7).to_dict()
    assert first == decompose(base, epi, seed=7).to_dict()
    assert json.loads(json.dumps(first, allow_nan=False)) == first


@pytest.mark.parametrize(
    ("base", "epi"),
    [
        pytest.param(make_calls(3, 111), make_calls(2, 112, dynamic=9000.0), id="tiny-windows"),
        pytest.param(make_calls(1, 113), make_calls(1, 114), id="one-call-each"),
        pytest.param(
            make_calls(600, 115, cache_known=False),
            make_calls(300, 116, hit_rate=0.2, cache_known=False),
            id="all-null-cache",
        ),
        pytest.param(
            make_calls(600, 117, mix={"east": 1.0}),
            make_calls(300, 118, mix={"east": 1.0}, queue_ms=300.0),
            id="single-route",
        ),
        pytest.param(
            make_calls(40, 119, streaming=False),
            make_calls(25, 120, streaming=False, output=400.0),
            id="small-non-streaming",
        ),
        pytest.param(
            make_calls(500, 121, prefix=0, hit_rate=0.0),
            make_calls(200, 122, prefix=0, hit_rate=0.0),
            id="no-cache-at-all",
        ),
        pytest.param(
            constant_tokens(make_calls(300, 123)),
            constant_tokens(make_calls(100, 124, itl_mult=1.5)),
            id="constant-tokens",
        ),
    ],
)
def test_degenerate_inputs_do_not_crash(base, epi):
    d = decompose(base, epi)
    assert all(np.isfinite(v) for v in d.contributions_ms.values())
    assert sum(d.contributions_ms.values()) == pytest.approx(d.observed_value - d.baseline_value, abs=1e-6)
    json.dumps(d.to_dict(), allow_nan=False)


def test_missing_cache_is_reported_and_dropped():
    base = make_calls(300, 131, cache_known=False)
    d = decompose(base, make_calls(200, 132, cache_known=False, queue_ms=500.0))
    ev = {r["signal"]: r for r in d.evidence}
    assert ev["cache_read_ratio"]["baseline"] is None and ev["cache_hit_rate"]["observed"] is None
    assert d.model_fit["cache_imputed_rows"] == 500
    assert d.model_fit["slopes_ms_per_token"]["cached"] == 0.0  # no cache data → the covariate is dropped
    assert share(d, "batch_contention") > 0.6


def test_itl_metric_without_token_counts_books_the_change_as_residual():
    """Streams without include_usage carry no token counts: ITL per call is known, the model cannot rebuild it."""
    tokens = ("input_tokens", "cache_read_tokens", "uncached_input_tokens", "output_tokens")
    base, epi = null_columns(make_calls(300, 151), tokens), null_columns(make_calls(200, 152, itl_mult=1.5), tokens)
    d = decompose(base, epi, metric="itl_p95_ms")
    assert d.observed_value > 1.3 * d.baseline_value
    assert d.contributions_ms["residual"] == pytest.approx(d.observed_value - d.baseline_value)
    assert d.model_fit["tokens_imputed_rows"] == 1000  # input and output missing on all 500 calls


def test_usage_errors():
    with pytest.raises(ValueError, match="unsupported metric"):
        decompose(make_calls(10, 1), make_calls(10, 2), metric="p95")
    with pytest.raises(ValueError, match="streaming"):
        decompose(make_calls(50, 1, streaming=False), make_calls(50, 2, streaming=False), metric="ttft_p95_ms")
    with pytest.raises(ValueError, match="episode window"):
        decompose(make_calls(10, 1), make_calls(0, 2))
    assert parse_metric("itl_p99.9_ms").q == pytest.approx(0.999)


def test_weighted_quantile_and_coupling_are_exact():
    rng = np.random.default_rng(3)
    values = rng.lognormal(0, 1, 997)
    for q in (0.5, 0.9, 0.95, 0.99, 1.0):
        assert weighted_quantile(values, np.ones(values.size, dtype=np.int64), q) == np.quantile(
            values, q, method="inverted_cdf"
        )
    ib, ie, w = quantile_coupling(rng.integers(0, 50, 37), rng.integers(0, 50, 23), rng)
    assert np.all(np.bincount(ib, weights=w, minlength=37) == 23)
    assert np.all(np.bincount(ie, weights=w, minlength=23) == 37)


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_golden_mixed_scenario():
    """Prompt growth and a queue on every route at once, plus a bit of traffic moving to the slow route."""
    epi = make_calls(1500, 142, dynamic=5000.0, queue_ms=250.0, mix={"east": 0.5, "west": 0.35, "slow": 0.15})
    got = _rounded(decompose(make_calls(4000, 141), epi, seed=0).to_dict())
    path = GOLDEN / "mixed_scenario.json"
    if os.environ.get("SPANPRISM_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    assert got == json.loads(path.read_text())
