"""Detection: episode properties on seeded panels, and the whole job (rollups → records) on seeded calls."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest
from support.panels import DAY, START_S, lognormal_panel

from spanprism.api.storage.connect import open_db
from spanprism.attribution.baselines import create_baseline
from spanprism.attribution.detection.cusum import EpisodeTracker
from spanprism.attribution.detection.episodes import (
    FAMILIES,
    DetectionConfig,
    Episode,
    detect_family,
    prefer_finer,
)
from spanprism.attribution.passes.detect_pass import run_attribution
from spanprism.attribution.simulator.shifts import SeriesSpec, Shift, Surge, at, generate_calls, insert_calls
from spanprism.attribution.store import state as store
from spanprism.attribution.store.records import list_regressions

RECORD_KEYS = {"id", "series", "start", "end", "status", "metric", "baseline", "observed", "change_pct", "label",
               "reason", "confidence", "contributions_ms", "evidence", "exemplars"}  # fmt: skip


CFG = DetectionConfig()


def test_stationary_panel_has_no_episode():
    episodes, _ = detect_family(lognormal_panel(10, n_series=4, seed=1), CFG, eval_from_col=DAY)
    assert episodes == []


# How fast depends on the per-call spread: at 20 calls a bucket a 2-bucket alarm needs a TTFT-like spread
# (log-sd 0.25, the LLMPerf measurements); e2e-like spread (0.5) needs ~100 calls a bucket for that.
@pytest.mark.parametrize(
    ("calls", "sigma", "factor", "delay"),
    [(24, 0.25, 1.3, 2), (100, 0.5, 1.3, 2), (1000, 0.5, 1.3, 2), (300, 0.5, 1.15, 6)],
)
def test_shift_is_found_fast_and_resolves(calls, sigma, factor, delay):
    onset = 8 * DAY + 150  # 12:30 on day 8
    panel = lognormal_panel(10, calls=calls, seed=2, shift=(onset, onset + 24, factor), sigma=sigma)
    episodes, _ = detect_family(panel, CFG, eval_from_col=DAY)
    assert len(episodes) == 1
    ep = episodes[0]
    alarm_bucket = (ep.detected_at.timestamp() - START_S) // 300 - 1
    assert abs((ep.start.timestamp() - START_S) // 300 - onset) <= 2
    assert alarm_bucket - onset <= delay
    assert ep.end is not None and ep.status == "resolved"
    assert 0 <= (ep.end.timestamp() - START_S) // 300 - (onset + 24) <= 2
    assert ep.change_pct == pytest.approx(100 * (factor - 1), abs=12)


def test_single_bucket_spike_is_not_an_episode():
    panel = lognormal_panel(10, seed=3)
    panel.stats["e2e_p95_ms"][0, 8 * DAY + 100] += 2.0
    panel.stats["e2e_p50_ms"][0, 8 * DAY + 100] += 2.0
    assert detect_family(panel, CFG, eval_from_col=DAY)[0] == []


def test_own_traffic_surge_with_unchanged_latency_is_not_a_regression():
    panel = lognormal_panel(10, seed=4, surge=(8 * DAY, 8 * DAY + 48, 8.0))
    assert detect_family(panel, CFG, eval_from_col=DAY)[0] == []


def test_sparse_buckets_never_alarm():
    # Three calls a bucket and latency tripled for a day: nothing is evaluated, so nothing alarms.
    panel = lognormal_panel(10, calls=3, seed=5, shift=(8 * DAY, 9 * DAY, 3.0))
    assert all(np.isnan(v).all() for v in panel.stats.values())
    assert detect_family(panel, CFG, eval_from_col=DAY)[0] == []


def test_episode_that_is_still_going_is_open():
    episodes, _ = detect_family(lognormal_panel(9, seed=6, shift=(8 * DAY + 200, 9 * DAY, 1.5)), CFG, eval_from_col=DAY)
    assert [e.status for e in episodes] == ["open"] and episodes[0].end is None


def test_fitted_baselines_are_returned_per_statistic():
    _, last = detect_family(lognormal_panel(9, seed=7), CFG, eval_from_col=DAY)
    assert set(last) == set(FAMILIES["e2e"])
    chosen = [b for b in last["e2e_p95_ms"] if b.arrays["ok"].any()]
    assert [b.kind for b in chosen] == ["seasonal"]
    center, _ = create_baseline("seasonal").expected(chosen[0].row(0), [START_S + 9 * 86400 + 3600 * 6])
    assert center[0] == pytest.approx(np.log(900) + 0.82 + 0.05, abs=0.05)


def test_tracker_needs_two_buckets_and_the_minimum_change():
    tracker = EpisodeTracker(2, 1, k=1.0, h=6.0, min_log_change=np.log(1.1), resolve_z=1.0, resolve_buckets=3)
    z = np.array([[50.0], [50.0]])
    r = np.array([[0.5], [0.05]])  # series 1: certain but only +5 %
    assert tracker.step(0, z, r).tolist() == []
    assert tracker.step(1, z, r).tolist() == [0]
    for t in range(2, 6):
        tracker.step(t, np.zeros((2, 1)), np.zeros((2, 1)))
    assert [(s.row, s.onset, s.alarm, s.end) for s in tracker.spans()] == [(0, 0, 1, 2)]


def _episode(grain_s: int, start_h: float, end_h: float | None, family: str = "ttft") -> Episode:
    start = at(7) + timedelta(hours=start_h)
    end = None if end_h is None else at(7) + timedelta(hours=end_h)
    return Episode(f"{grain_s}-{start_h}", "s", family, f"{family}_p95_ms", grain_s, start, start, start, end,
                   1.0, 1.3, 30.0, 30.0, 3)  # fmt: skip


def test_coarser_grain_only_adds_what_the_finer_one_missed():
    fine = [_episode(300, 1.0, 2.0), _episode(300, 10.0, None)]
    coarse = [_episode(3600, 1.0, 3.0), _episode(3600, 5.0, 6.0), _episode(3600, 11.0, 12.0),
              _episode(3600, 1.0, 2.0, family="e2e")]  # fmt: skip
    kept = prefer_finer(coarse + fine)
    assert sorted((e.grain_s, e.family, e.start.hour) for e in kept) == [
        (300, "ttft", 1),
        (300, "ttft", 10),
        (3600, "e2e", 1),
        (3600, "ttft", 5),
    ]


# --- the whole job on calls ------------------------------------------------------------------------------------

SPECS = [
    SeriesSpec(service="steady", rate=0.12),
    SeriesSpec(service="ttft-shift", rate=0.12),
    SeriesSpec(service="all-shift", rate=0.12),
    SeriesSpec(service="sparse", rate=0.02, streaming=0.0),
]
SHIFTS = (Shift(1, at(7, 13), 7200, 1.4, "ttft"), Shift(2, at(7, 15), 7200, 1.4, "e2e"),
          Shift(3, at(7, 10), 6 * 3600, 1.6, "e2e"))  # fmt: skip
SURGES = (Surge(0, at(7, 12), 3 * 3600, 4.0),)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    path = tmp_path_factory.mktemp("job") / "j.duckdb"
    con = open_db(path)
    insert_calls(con, generate_calls(SPECS, days=9, shifts=SHIFTS, surges=SURGES, seed=21))
    summary = run_attribution(con)
    yield con, summary
    con.close()


def _by_service(con) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in list_regressions(con, detail=True):
        out.setdefault(r["series"]["service"], []).append(r)
    return out


def test_job_finds_each_injected_regression_once(job):
    con, summary = job
    regs = _by_service(con)
    assert summary.series == 4 and summary.buckets_evaluated > 0
    assert "steady" not in regs  # a 4x traffic surge with the same latency
    assert [r["metric"].split("_")[0] for r in regs["ttft-shift"]] == ["ttft"]
    (all_shift,) = regs["all-shift"]  # TTFT, ITL and e2e all moved: one record, every metric listed
    assert {m["family"] for m in all_shift["metrics"]} >= {"e2e", "itl"}
    assert all_shift["change_pct"] == max(m["change_pct"] for m in all_shift["metrics"])
    (sparse,) = regs["sparse"]  # 0.02 calls/s: evaluated on hourly buckets
    assert sparse["metric"].startswith("e2e_") and sparse["status"] == "resolved"
    for name, shift in (("ttft-shift", SHIFTS[0]), ("all-shift", SHIFTS[1]), ("sparse", SHIFTS[2])):
        start = np.datetime64(regs[name][0]["start"].rstrip("Z"))
        assert abs(start - np.datetime64(shift.start.replace(tzinfo=None))) <= np.timedelta64(60, "m"), name


def test_records_have_the_design_shape(job):
    con, _ = job
    records = list_regressions(con)
    assert records and all(set(r) == RECORD_KEYS for r in records)
    rec = records[0]
    assert set(rec["series"]) == {"service", "provider", "model", "operation"}
    assert rec["label"] == "unexplained" and rec["contributions_ms"] == {}
    # Before labelling, the evidence holds only what detection knows: the test that fired and what it saw.
    assert rec["evidence"] and all(e["signal"] == "detection" and e["test"] for e in rec["evidence"])
    assert rec["status"] in {"open", "resolved", "accepted"} and rec["start"].endswith("Z")
    assert list_regressions(con, label="prefill_growth") == []
    assert len(list_regressions(con, series={"service": "ttft-shift"})) == 1
    assert list_regressions(con, since=at(8)) == [] and len(list_regressions(con, until=at(8))) == len(records)


def test_rerun_is_idempotent_and_incremental_keeps_ids(job):
    con, _ = job
    before = {r["id"]: r for r in list_regressions(con)}
    run_attribution(con)
    assert {r["id"]: r for r in list_regressions(con)} == before
    run_attribution(con, since=at(7, 12))
    assert set(r["id"] for r in list_regressions(con)) == set(before)
    assert store.load_baseline(con, store.series_names(con) and next(iter(store.series_names(con))),
                               "e2e_p50_ms")["kind"] in {"seasonal", "rolling"}  # fmt: skip


def test_open_episode_keeps_its_id_when_it_continues_and_resolves(tmp_path):
    specs = [SeriesSpec(service="svc", rate=0.15)]
    shift = Shift(0, at(4, 18), 4 * 3600, 1.5, "ttft")
    calls = generate_calls(specs, days=5, shifts=(shift,), seed=5)
    cut = np.datetime64(
        at(
            4,
            19,
        ).replace(tzinfo=None)
    )
    starts = calls.column("start_time").to_numpy()
    first, rest = calls.filter(pa.array(starts < cut)), calls.filter(pa.array(starts >= cut))
    rest = rest.set_column(rest.schema.get_field_index("ingest_batch"), "ingest_batch",
                           pa.array(["second"] * rest.num_rows))  # fmt: skip
    con = open_db(tmp_path / "o.duckdb")
    insert_calls(con, first)
    run_attribution(con, since=at(4))
    (opened,) = list_regressions(con)
    assert opened["status"] == "open" and opened["end"] is None
    insert_calls(con, rest)
    run_attribution(con, since=at(4, 19))
    (resolved,) = list_regressions(con)
    assert resolved["id"] == opened["id"] and resolved["status"] == "resolved"
    assert resolved["end"] is not None and resolved["end"] >= (shift.start + timedelta(hours=4)).isoformat()[:16]
    con.close()


def test_quiet_hours_of_a_busy_series_are_watched_on_the_hourly_grain(tmp_path):
    # ~30 calls per 5 minutes on average, but only ~6 at night: the 5-minute grain never evaluates the night,
    # so a night-time TTFT regression is only visible on hourly buckets.
    specs = [SeriesSpec(service="diurnal", rate=0.1, diurnal=0.8)]
    shift = Shift(0, at(6, 1), 3 * 3600, 1.6, "ttft")
    con = open_db(tmp_path / "n.duckdb")
    insert_calls(con, generate_calls(specs, days=7, shifts=(shift,), seed=8))
    found = {}
    for watch in (False, True):
        run_attribution(con, config=DetectionConfig(watch_coarser=watch))
        found[watch] = [r for r in list_regressions(con) if r["start"] < (shift.start + timedelta(hours=3)).isoformat()
                        and (r["end"] is None or r["end"] > shift.start.isoformat())]  # fmt: skip
    con.close()
    assert found[False] == [] and len(found[True]) == 1
    assert found[True][0]["metric"].startswith("ttft_")
