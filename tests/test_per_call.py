"""Per-call detection of sparse series: the threshold keeps its false-alarm budget, shifts of a few calls an
hour are found with 5-minute onsets, outliers and token drift are not regressions, and the job records the test."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from spanprism.api.storage.connect import open_db
from spanprism.attribution.detection.base import ESCALATED
from spanprism.attribution.detection.per_call import TEST, TEST_TOKENS, detect_calls
from spanprism.attribution.detection.per_call_config import PerCallConfig
from spanprism.attribution.detection.per_call_series import bursty_keys, sparse_keys
from spanprism.attribution.detection.per_call_stats import threshold
from spanprism.attribution.passes.detect_pass import run_attribution
from spanprism.attribution.simulator.shifts import SeriesSpec, Shift, Surge, at, generate_calls, insert_calls
from spanprism.attribution.store.records import list_regressions

DAY_S = 86400
START_S = 1_772_409_600  # 2026-03-02 00:00 UTC


def _calls(days: int, per_hour: float, *, seed: int, shift: tuple[float, float, float] | None = None,
           outlier_at: float | None = None, output_growth: tuple[float, float] | None = None,
           then: tuple[float, float, float] | None = None) -> pd.DataFrame:  # fmt: skip
    """One series of log-normal calls; ``shift`` = (start h, hours, factor) multiplies every latency, ``then`` (same
    form) multiplies it further."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(per_hour * 24 * days)
    t = np.sort(rng.uniform(START_S, START_S + days * DAY_S, n))
    hours = (t - START_S) / 3600
    out = rng.lognormal(np.log(200), 0.6, n)
    if output_growth:
        out[hours >= output_growth[0]] *= output_growth[1]
    tin = rng.lognormal(np.log(2000), 0.4, n)
    ttft = 400 * (tin / 2000) ** 0.5 * rng.lognormal(0, 0.3, n)
    itl = 20 * rng.lognormal(0, 0.25, n)
    factor = np.ones(n)
    for step in (shift, then):
        if step:
            factor[(hours >= step[0]) & (hours < step[0] + step[1])] *= step[2]
    if outlier_at is not None:
        factor[np.argmin(np.abs(hours - outlier_at))] = 50.0
    return pd.DataFrame({"series_key": "s0", "t": t, "duration_ms": (ttft + out * itl) * factor,
                         "ttft_ms": ttft * factor, "itl_ms": itl * factor, "input_tokens": tin.round(),
                         "output_tokens": out.round()})  # fmt: skip


def _detect(frame: pd.DataFrame, days: int, config: PerCallConfig | None = None):
    return detect_calls(frame, eval_from_s=START_S + 7 * DAY_S, horizon_s=START_S + days * DAY_S, config=config)


def test_threshold_grows_with_calls_and_keeps_the_siegmund_run_length():
    config = PerCallConfig()
    h = threshold(np.array([500.0, 5000.0, 50000.0]), config)
    assert np.all(np.diff(h) > 0)
    # Simulated in-control run length of the CUSUM at h for ARL0 = 2,000 calls: within a factor 1.6.
    arl0 = 2000.0
    hk = float(threshold(arl0 * config.false_alarms_per_week, config))
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 30000))
    s = np.zeros(200)
    first = np.full(200, np.inf)
    for i in range(z.shape[1]):
        s = np.maximum(0.0, s + z[:, i] - config.k)
        first[(s >= hk) & np.isinf(first)] = i + 1
    assert np.isfinite(first).all()
    assert arl0 / 1.6 < first.mean() < arl0 * 1.6


def test_stationary_sparse_series_has_no_episode():
    for seed in range(4):
        assert _detect(_calls(14, 15, seed=seed), 14) == []


@pytest.mark.parametrize(("per_hour", "hours", "factor"), [(5, 12, 1.5), (15, 4, 1.4), (40, 2, 1.3)])
def test_shift_of_a_sparse_series_is_found_with_a_5_minute_onset(per_hour, hours, factor):
    onset_h = 9 * 24 + 10.5
    episodes = _detect(_calls(12, per_hour, seed=1, shift=(onset_h, hours, factor)), 12)
    assert episodes, "missed"
    ep = min(episodes, key=lambda e: e.start)
    assert ep.grain_s == 0 and ep.start.minute % 5 == 0 and ep.start.second == 0
    # Onset precision follows the calls: ~a dozen calls of evidence before the step is dated.
    assert abs((ep.start.timestamp() - START_S) / 3600 - onset_h) <= max(1.0, 15 / per_hour)
    assert ep.status == "resolved"
    test = ep.stats[TEST_TOKENS] if TEST_TOKENS in ep.stats else ep.stats["per_call_cusum"]
    assert test["statistic"] >= test["threshold"] and test["calls"] >= PerCallConfig().min_calls


def _agent(seed: int, per_hour: float) -> pd.DataFrame:
    """An agent's calls: short tool calls and long answers, the hour's share of long answers set by its sessions
    (drawn per hour), so raw latency is bimodal and its hourly mean wanders with no change of the series."""
    frame = _calls(14, per_hour, seed=seed)
    rng = np.random.default_rng(1000 + seed)
    hour = ((frame["t"] - START_S) // 3600).astype(int).to_numpy()
    long = rng.uniform(size=len(frame)) < rng.beta(0.7, 0.7, hour.max() + 1)[hour]
    out = np.where(long, rng.lognormal(np.log(300), 0.4, len(frame)), rng.lognormal(np.log(8), 0.5, len(frame)))
    frame["duration_ms"] = frame["ttft_ms"] + out * frame["itl_ms"]
    frame["output_tokens"] = out.round()
    return frame


def test_runs_of_correlated_calls_that_average_out_are_not_episodes():
    # Without the confirmation the CUSUM alarms on hours whose sessions happened to want long answers; the episode's
    # mean over all its calls, against the baseline's real hour-to-hour spread, shows there was no change.
    unconfirmed = PerCallConfig(confirm_z=-np.inf)
    before = sum(len(_detect(_agent(seed, 25), 14, unconfirmed)) for seed in range(8))
    after = sum(len(_detect(_agent(seed, 25), 14)) for seed in range(8))
    assert before >= 16
    assert after <= before / 3


def test_a_real_shift_of_a_bimodal_series_is_confirmed():
    frame = _agent(3, 25)
    hours = (frame["t"] - START_S) / 3600
    step = (hours >= 9 * 24 + 6) & (hours < 9 * 24 + 18)
    for col in ("duration_ms", "ttft_ms", "itl_ms"):
        frame.loc[step, col] *= 1.8
    episodes = [e for e in _detect(frame, 14) if _covers(e, 9 * 24 + 12)]
    assert episodes
    test = next(v for v in episodes[0].stats.values() if "confirm_z" in v)
    assert test["confirm_z"] >= PerCallConfig().confirm_z


def test_one_huge_outlier_is_not_an_episode():
    assert _detect(_calls(12, 10, seed=2, outlier_at=9 * 24 + 12), 12) == []


def test_persisting_shift_is_accepted_within_48_hours():
    onset_h = 8 * 24 + 3
    episodes = _detect(_calls(13, 15, seed=3, shift=(onset_h, 1000, 1.6)), 13)
    first = min(episodes, key=lambda e: e.start)
    assert first.status == "accepted"
    assert (first.end - first.start) <= timedelta(hours=48)


def test_job_tests_sparse_series_per_call_and_records_the_test_in_evidence(tmp_path):
    specs = [SeriesSpec(service="sparse", rate=15 / 3600, diurnal=0.3),
             SeriesSpec(service="busy", provider="anthropic", rate=0.5)]  # fmt: skip
    shifts = (Shift(0, at(8, 9), 5 * 3600, 1.5, "e2e"),)
    con = open_db(tmp_path / "j.duckdb")
    insert_calls(con, generate_calls(specs, days=10, shifts=shifts, seed=5))
    run_attribution(con)
    records = list_regressions(con)
    sparse = [r for r in records if r["series"]["service"] == "sparse"]
    assert len(sparse) == 1 and not [r for r in records if r["series"]["service"] == "busy"]
    detection = [e for e in sparse[0]["evidence"] if e.get("signal") == "detection"]
    assert detection and detection[0]["test"].startswith("per_call_cusum") and detection[0]["calls"] >= 10
    con.close()


def _covers(ep, hour: float) -> bool:
    t = START_S + hour * 3600
    return ep.start.timestamp() <= t and (ep.end is None or ep.end.timestamp() > t)


def _e2e(episodes):
    return sorted((e for e in episodes if e.family == "e2e"), key=lambda e: e.start)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_larger_shift_inside_an_open_episode_is_an_episode_of_its_own(seed):
    onset_h, more_h = 9 * 24 + 2, 9 * 24 + 8  # +30 % for 6 h, then ×1.8 on top for 6 h
    episodes = _e2e(_detect(_calls(12, 15, seed=seed, shift=(onset_h, 12, 1.3), then=(more_h, 6, 1.8)), 12))
    first, second = (next(e for e in episodes if _covers(e, h)) for h in (onset_h + 3, more_h + 3))
    assert first.end is not None and first.end <= second.start
    assert abs((second.start.timestamp() - START_S) / 3600 - more_h) <= 1.0
    assert second.change_pct > first.change_pct + 30
    test = next(v for v in second.stats.values() if "statistic" in v)
    assert test[ESCALATED] == pytest.approx(30, abs=15)  # the level it escalated from
    assert not any(ESCALATED in v for v in first.stats.values())


@pytest.mark.parametrize("seed", range(6))
def test_a_steady_shift_is_not_split(seed):
    onset_h = 9 * 24 + 2
    episodes = _e2e(_detect(_calls(12, 15, seed=seed, shift=(onset_h, 12, 1.6)), 12))
    during = [e for e in episodes if e.start.timestamp() < START_S + (onset_h + 12) * 3600]
    assert len(during) == 1, [(e.start, e.end, e.change_pct) for e in during]
    assert not any(ESCALATED in v for v in during[0].stats.values())


def test_the_job_reports_an_escalation_as_a_regression_of_its_own(tmp_path):
    specs = [SeriesSpec(service="sparse", rate=15 / 3600, diurnal=0.3)]
    shifts = (Shift(0, at(8, 2), 12 * 3600, 1.3, "e2e"), Shift(0, at(8, 8), 6 * 3600, 1.8, "e2e"))
    con = open_db(tmp_path / "j.duckdb")
    insert_calls(con, generate_calls(specs, days=10, shifts=shifts, seed=5))
    run_attribution(con)
    records = sorted(list_regressions(con), key=lambda r: r["start"])
    con.close()
    late = [r for r in records if r["start"] >= "2026-03-10T07:00"]
    early = [r for r in records if "2026-03-10T00:00" <= r["start"] < "2026-03-10T07:00"]
    assert early and late, [(r["start"], r["end"], r["change_pct"]) for r in records]
    assert early[0]["end"] is not None and early[0]["end"] <= late[0]["start"]
    assert late[0]["change_pct"] > early[0]["change_pct"]
    detection = [e for e in late[0]["evidence"] if e.get("signal") == "detection"]
    assert any(e.get("escalated_from_pct", 0) > 10 for e in detection), detection


def _hourly(counts: dict[int, np.ndarray]) -> pd.DataFrame:
    """Rollup rows (``sid``, ``grain_s``, ``bucket_s``, ``n_ok``) of hourly call counts per series."""
    parts = [pd.DataFrame({"sid": sid, "grain_s": 3600, "bucket_s": START_S + 3600 * np.arange(n.size), "n_ok": n})
             for sid, n in counts.items()]  # fmt: skip
    frame = pd.concat(parts, ignore_index=True)
    return frame[frame["n_ok"] > 0]


def test_bursty_keys_are_the_busier_series_whose_arrivals_come_in_bursts():
    rng = np.random.default_rng(11)
    hours = np.arange(14 * 24)
    cycle = 1 + 0.6 * np.sin(2 * np.pi * (hours % 24 - 9) / 24)  # a strong daily cycle is not burstiness
    bursts = rng.gamma(1.0, 1.0, hours.size)  # each hour's rate drawn anew: calls arrive in bursts
    counts = {0: rng.poisson(120 * cycle), 1: rng.poisson(120 * bursts), 2: rng.poisson(900 * bursts),
              3: rng.poisson(30 * bursts), 4: rng.poisson(200 * cycle)}  # fmt: skip
    frame, keys = _hourly(counts), ["steady", "bursty", "bursty-busy", "bursty-sparse", "steady-busier"]
    assert bursty_keys(frame, keys, "n_ok", PerCallConfig()) == ["bursty"]
    assert sparse_keys(frame, keys, "n_ok", PerCallConfig()) == ["bursty-sparse"]  # already tested per call
    assert bursty_keys(frame, keys, "n_ok", PerCallConfig(bursty_dispersion=0)) == []


def _bursty_job(tmp_path, config: PerCallConfig) -> list[dict]:
    """A series of ~100 calls an hour whose traffic comes in hour-long bursts (5× on a fifth of the hours), its
    latency 1.6× for 4 hours on day 9; the regressions the job reports for it."""
    rng = np.random.default_rng(4)
    surges = tuple(Surge(0, at(hours=float(h)), 3600, 5.0) for h in np.flatnonzero(rng.random(12 * 24) < 0.2))
    con = open_db(tmp_path / f"b{config.bursty_dispersion}.duckdb")
    spec, shift = SeriesSpec(service="bursty", rate=100 / 3600, diurnal=0.3), Shift(0, at(9, 10), 4 * 3600, 1.6, "e2e")
    insert_calls(con, generate_calls([spec], days=12, shifts=(shift,), surges=surges, seed=4))
    run_attribution(con, per_call=config)
    records = list_regressions(con)
    con.close()
    onset = at(9, 10)
    return [r for r in records if abs((datetime.fromisoformat(r["start"]) - onset).total_seconds()) < 3 * 3600]


def test_a_bursty_series_too_busy_to_be_sparse_is_tested_per_call(tmp_path):
    found = _bursty_job(tmp_path, PerCallConfig())
    tests = [e.get("test", "") for r in found for e in r["evidence"] if e.get("signal") == "detection"]
    assert found and any(t.startswith("per_call_cusum") for t in tests)
    off = _bursty_job(tmp_path, PerCallConfig(bursty_dispersion=0))
    assert not any(e.get("test", "").startswith("per_call_cusum") for r in off for e in r["evidence"]
                   if e.get("signal") == "detection")  # fmt: skip


def test_a_bursty_series_is_tested_per_call_on_token_adjusted_latency_only():
    """Its own outputs 3× as long for 6 hours on day 9: the raw test sees the slower calls, the token-adjusted one
    does not; a bursty series (``adjusted_only``) leaves its raw latency to the bucket detector."""
    calls = _calls(12, 100, seed=3)
    hours = (calls["t"] - START_S) / 3600
    window = (hours >= 9 * 24 + 10) & (hours < 9 * 24 + 16)
    itl = (calls["duration_ms"] - calls["ttft_ms"]) / calls["output_tokens"].clip(lower=1)
    calls.loc[window, "output_tokens"] *= 3
    calls["duration_ms"] = calls["ttft_ms"] + calls["output_tokens"] * itl
    both = _detect(calls, 12)
    assert [e.family for e in both if TEST in e.stats] == ["e2e"]  # the raw test found the slower calls
    only = detect_calls(calls, eval_from_s=START_S + 7 * DAY_S, horizon_s=START_S + 12 * DAY_S, adjusted_only={"s0"})
    assert only == []
