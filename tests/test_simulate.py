"""The workload simulator: determinism, schema, physics on generated calls, and that every scenario family moves
what it claims inside its window (measured on the simulator's own output, not through any detector)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spanprism.attribution import vocabulary
from spanprism.attribution.simulator.scenarios import FAMILY_SPECS
from spanprism.attribution.simulator.simulate import FAMILIES, SimulationConfig, simulate, write_labels
from spanprism.models.schema import LLM_CALLS_SCHEMA

SMALL = SimulationConfig(seed=3, days=1.6, series=4, rate_min=0.05, rate_max=0.4)
#: Every attribution label has a simulator family (so the classifier can learn it), plus benign ``none`` windows.
LABELS = {*vocabulary.LABELS, "none"}


@pytest.fixture(scope="module")
def small():
    return simulate(SMALL)


def test_same_seed_is_byte_identical_and_other_seed_differs(small, tmp_path):
    again = simulate(SMALL)
    assert again.calls.equals(small.calls)
    assert again.labels == small.labels
    a, b = write_labels(tmp_path / "a.jsonl", small.labels), write_labels(tmp_path / "b.jsonl", again.labels)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes()
    other = simulate(SimulationConfig(**{**SMALL.to_dict(), "seed": 4}))
    assert not other.calls.equals(small.calls)
    assert other.calls.column("trace_id")[0] != small.calls.column("trace_id")[0]


def _digest(config: SimulationConfig) -> tuple[str, str, int]:
    """sha256 prefixes of the calls (Arrow IPC stream bytes) and of the labels (sorted-key JSON lines)."""
    result = simulate(config)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, result.calls.schema) as writer:
        writer.write_table(result.calls)
    labels = "".join(json.dumps(lab, sort_keys=True) + "\n" for lab in result.labels).encode()
    return (hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16], hashlib.sha256(labels).hexdigest()[:16],
            result.calls.num_rows)  # fmt: skip


#: Digests of the simulator's output before users' habits existed: with every habit off (the defaults) the output
#: must stay byte-identical, or every benchmark number and trained classifier silently changes meaning.
GOLDEN = {
    SMALL: ("e906b55238b56dac", "339c777d347aea34", 114836),
    SimulationConfig(seed=5, days=2.5, series=6, rate_min=0.01, rate_max=0.2,
                     families=("output_growth", "cache_eviction/ttl_expired", "none/own_traffic_surge")): (
        "e8b505e0cb840701", "9eff2be22e744bef", 81522),
}  # fmt: skip


@pytest.mark.parametrize("config", list(GOLDEN), ids=["small", "three_families"])
def test_default_output_matches_golden_digests(config):
    assert _digest(config) == GOLDEN[config]


def test_config_round_trips_and_rejects_unknown_families():
    cfg = SimulationConfig(seed=1, families=["output_growth"], strengths=["strong"])
    assert SimulationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        SimulationConfig(families=["no_such_family"])


def test_schema_ids_and_keys(small):
    calls = small.calls
    assert calls.schema == LLM_CALLS_SCHEMA
    assert calls.num_rows > 1000
    trace, span = calls.column("trace_id").to_pylist(), calls.column("span_id").to_pylist()
    assert all(len(t) == 32 and int(t, 16) >= 0 and t == t.lower() for t in trace[:500])
    assert all(len(s) == 16 and s == s.lower() for s in span[:500])
    assert len(set(zip(trace, span, strict=True))) == calls.num_rows
    providers = set(calls.column("provider").to_pylist())
    assert providers <= {"openai", "azure.ai.openai", "aws.bedrock", "anthropic", "gcp.vertex_ai"}
    status = calls.column("status").to_numpy(zero_copy_only=False)
    assert set(status) <= {"ok", "error"} and 0 < (status == "error").mean() < 0.06
    ok = pc.equal(calls.column("status"), "ok")
    okc = calls.filter(ok)
    inp, cr = okc.column("input_tokens").to_numpy(), okc.column("cache_read_tokens").to_numpy()
    assert (okc.column("uncached_input_tokens").to_numpy() == inp - cr).all() and (cr <= inp).all()


def test_labels_contract(small):
    assert small.labels, "a 1.6-day run with a 1-day clean history still has episodes"
    for lab in small.labels:
        json.dumps(lab)
        assert lab["label"] in LABELS and FAMILIES[lab["family"]] == (lab["label"], lab["reason"])
        assert set(lab["series"]) == {"service", "provider", "model", "operation"}
        start, end = (datetime.fromisoformat(lab[k].replace("Z", "+00:00")) for k in ("start", "end"))
        assert (end - start).total_seconds() >= 3600
        assert (start - datetime.fromisoformat(SMALL.start.replace("Z", "+00:00"))).total_seconds() >= 86400
    assert len(small.series) == SMALL.series and all("routes" in s and "rate" in s for s in small.series)


def test_families_cover_every_label_and_reason():
    assert {label for label, _ in FAMILIES.values()} == LABELS
    reasons = {r for _, r in FAMILIES.values()}
    assert {
        "user_input_growth",
        "system_prompt_growth",
        "prompt_changed",
        "ttl_expired",
        "provider_evicted",
        "queueing",
        "decode_slowdown",
        "region_shift",
        "deployment_change",
        "model_version_change",
    } <= reasons


def _arr(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def test_physics_on_generated_calls(small):
    calls = small.calls.filter(pc.equal(small.calls.column("status"), "ok"))
    streaming = calls.filter(pc.equal(calls.column("streaming"), True))
    batch = calls.filter(pc.equal(calls.column("streaming"), False))
    assert streaming.num_rows and batch.num_rows
    assert batch.column("ttft_ms").null_count == batch.num_rows and batch.column("itl_ms").null_count == batch.num_rows
    assert streaming.column("ttft_ms").null_count == 0
    ttft, dur, decode = _arr(streaming, "ttft_ms"), _arr(streaming, "duration_ms"), _arr(streaming, "decode_ms")
    itl, out = _arr(streaming, "itl_ms"), _arr(streaming, "output_tokens")
    has_itl = ~np.isnan(itl)
    # ITL and decode are stored rounded to 1 µs, so allow that rounding times the token count.
    gap = np.abs(decode[has_itl] - itl[has_itl] * (out[has_itl] - 1))
    assert (gap <= 5e-4 * out[has_itl] + 1e-3).all()
    residual = dur - ttft - decode  # client overhead (+ an unexplained delay inside its windows)
    assert residual.min() >= -0.01 and np.median(residual) < 20
    # TTFT rises with uncached tokens within each series (same model, routes and noise source).
    for svc in set(streaming.column("service").to_pylist()):
        s = streaming.filter(pc.equal(streaming.column("service"), svc))
        unc, t = _arr(s, "uncached_input_tokens"), _arr(s, "ttft_ms")
        lo, hi = np.quantile(unc, [0.25, 0.75])
        if hi > 2 * lo and s.num_rows > 200:
            assert np.median(t[unc >= hi]) > np.median(t[unc <= lo])


# --- every family moves what it claims (strong episodes; before = equal-length window just before onset) ---

FAMILY_CFG = {"days": 1.75, "series": 2, "rate_min": 0.3, "rate_max": 1.0, "strengths": ("strong",)}


@pytest.fixture(scope="module")
def by_family():
    return {f: simulate(SimulationConfig(seed=11, families=[f], **FAMILY_CFG)) for f in FAMILIES}


class Window:
    """The labelled series' ok calls before and during (after the ramp) one episode."""

    def __init__(self, result, label: dict) -> None:
        s = label["series"]
        calls = result.calls
        mask = pc.and_(
            pc.equal(calls.column("service"), s["service"]), pc.equal(calls.column("provider"), s["provider"])
        )
        series = calls.filter(mask)
        t = _arr(series, "start_time").astype("datetime64[s]").astype(np.int64)
        start = int(np.datetime64(label["start"].rstrip("Z")).astype("datetime64[s]").astype(np.int64))
        end = int(np.datetime64(label["end"].rstrip("Z")).astype("datetime64[s]").astype(np.int64))
        ramp = int(label["ramp_s"])
        ok = _arr(series, "status") == "ok"
        self.streaming = bool(_arr(series, "streaming")[0])
        self.before = series.filter(pa.array(ok & (t >= start - (end - start)) & (t < start)))
        self.during = series.filter(pa.array(ok & (t >= start + ramp) & (t < end)))
        self.all_before = series.filter(pa.array((t >= start - (end - start)) & (t < start)))
        self.all_during = series.filter(pa.array((t >= start + ramp) & (t < end)))
        self.seconds = (end - start, end - start - ramp)

    def med(self, col: str) -> tuple[float, float]:
        return float(np.nanmedian(_arr(self.before, col))), float(np.nanmedian(_arr(self.during, col)))

    def ratio(self) -> tuple[float, float]:
        def r(t: pa.Table) -> float:
            return float(_arr(t, "cache_read_tokens").sum() / _arr(t, "input_tokens").sum())

        return r(self.before), r(self.during)

    def share(self, col: str, value: str) -> tuple[float, float]:
        return float(np.mean(_arr(self.before, col) == value)), float(np.mean(_arr(self.during, col) == value))

    def latency(self) -> str:
        return "ttft_ms" if self.streaming else "duration_ms"


def _windows(result, family: str) -> list[Window]:
    labs = [lab for lab in result.labels if lab["family"] == family]
    assert labs, f"{family} was not produced"
    return [Window(result, lab) for lab in labs]


def _route_target(result, lab: dict, reason: str) -> tuple[str, str]:
    series = next(s for s in result.series if s["service"] == lab["series"]["service"])
    name = {
        "region_shift": "standby_region",
        "deployment_change": "standby_deployment",
        "model_version_change": "standby_snapshot",
    }[reason]
    route = next(r for r in series["routes"] if r["name"] == name)
    col = {"region_shift": "region", "deployment_change": "deployment", "model_version_change": "response_model"}
    return col[reason], route[col[reason]]


def _check(fam: str, w: Window, result, lab: dict) -> None:
    lat = w.latency()
    if fam == "prefill_growth/user_input_growth":
        (u0, u1), (c0, c1), (r0, r1) = w.med("uncached_input_tokens"), w.med("cache_read_tokens"), w.ratio()
        assert u1 > 1.3 * u0 and abs(c1 - c0) <= 0.1 * max(c0, 1) and r1 < r0
    elif fam == "prefill_growth/system_prompt_growth":
        (i0, i1), (l0, l1) = w.med("input_tokens"), w.med(lat)
        assert i1 > 1.5 * i0 and l1 > 1.15 * l0
        assert set(_arr(w.during, "prompt_key")) - set(_arr(w.before, "prompt_key"))
    elif fam.startswith("cache_eviction/"):
        (r0, r1), (i0, i1) = w.ratio(), w.med("input_tokens")
        assert r1 < 0.8 * r0 and 0.75 < i1 / i0 < 1.33
        if fam.endswith("provider_evicted"):
            assert set(_arr(w.during, "prompt_key")) <= set(_arr(w.before, "prompt_key"))
    elif fam.startswith("batch_contention/") and fam != "batch_contention/decode_slowdown":
        # Latency rises more than the prompt work could explain: TTFT is sub-linear in uncached tokens (a fixed
        # overhead), so with tokens alone its ratio would stay below the token ratio (RAG prompts are bimodal,
        # their window medians wander).
        (l0, l1), (i0, i1) = w.med(lat), w.med("uncached_input_tokens")
        assert l1 / l0 > 1.2 * max(1.0, i1 / max(i0, 1))
    elif fam == "batch_contention/decode_slowdown":
        if w.streaming:
            (a0, a1), (t0, t1) = w.med("itl_ms"), w.med("ttft_ms")
            assert a1 > 1.3 * a0 and 0.8 < t1 / t0 < 1.25
        else:
            assert w.med("duration_ms")[1] > 1.15 * w.med("duration_ms")[0]
    elif fam.startswith("routing_change/"):
        col, value = _route_target(result, lab, FAMILIES[fam][1])
        s0, s1 = w.share(col, value)
        assert s0 < 0.02 and s1 > 0.25
    elif fam == "output_growth":
        (o0, o1), (d0, d1) = w.med("output_tokens"), w.med("duration_ms")
        assert o1 > 1.3 * o0 and d1 > d0
        if w.streaming:
            (a0, a1), (t0, t1) = w.med("itl_ms"), w.med("ttft_ms")
            assert 0.85 < a1 / a0 < 1.15 and 0.8 < t1 / t0 < 1.25
    elif fam == "unexplained":
        (d0, d1), (i0, i1), (o0, o1) = w.med("duration_ms"), w.med("input_tokens"), w.med("output_tokens")
        assert d1 > 1.15 * d0 and 0.75 < i1 / i0 < 1.33 and 0.75 < o1 / o0 < 1.33
        if w.streaming:
            assert 0.8 < w.med("ttft_ms")[1] / w.med("ttft_ms")[0] < 1.25
    elif fam == "none/own_traffic_surge":
        per_s = (w.all_before.num_rows / w.seconds[0], w.all_during.num_rows / w.seconds[1])
        assert per_s[1] > 2.0 * per_s[0]
        assert 0.8 < w.med(lat)[1] / w.med(lat)[0] < 1.25
    elif fam == "none/small_prompt_growth":
        i0, i1 = w.med("input_tokens")
        assert i1 / i0 < 1.15 and 0.8 < w.med(lat)[1] / w.med(lat)[0] < 1.25
    elif fam == "none/diurnal_peak":
        assert 0.8 < w.med(lat)[1] / w.med(lat)[0] < 1.25


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_moves_what_it_claims(by_family, family):
    result = by_family[family]
    for w, lab in zip(_windows(result, family), [x for x in result.labels if x["family"] == family], strict=True):
        assert w.before.num_rows > 50 and w.during.num_rows > 50
        assert lab["magnitude"] >= FAMILY_SPECS[family].magnitude[0] or family.startswith("cache_eviction/ttl")
        _check(family, w, result, lab)
