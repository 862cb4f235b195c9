"""Detection quality and attribution-job performance.

Quality (default): seeded synthetic calls (simulator/shifts.py) per traffic level: stationary series give the
false-episode rate per series-week; shifted series (+30 % and +15 % of e2e or TTFT for 1-3 h) give the detection
rate and the alarm delay in buckets after the first shifted bucket. Calls go through the real rollup SQL.

Performance (``--series N --days D``): rollup-level rows are generated directly (the statistics of a bucket are
drawn with the sampling noise of its call count) for N series × D days at 5 min and 1 h grains, then
baselines + detection run over all of them; the rollup SQL is timed separately on ``--calls`` real calls.

    .venv/bin/python benchmarks/attribute.py --quality
    .venv/bin/python benchmarks/attribute.py --series 1000 --days 30
    .venv/bin/python benchmarks/attribute.py --simulator --days 7

Before/after a change to detection, ``benchmarks/nightly_compare.py`` runs the performance pass of two versions back
to back and checks that their results are equal.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from spanprism.api.storage.connect import open_db
from spanprism.attribution.detection.episodes import DetectionConfig
from spanprism.attribution.passes.detect_pass import run_attribution
from spanprism.attribution.simulator.shifts import START, SeriesSpec, Shift, generate_calls
from spanprism.attribution.store.records import list_regressions

LEVELS = (0.02, 0.07, 0.2, 0.6)  # calls/s; 0.07 ≈ 20 calls per 5-min bucket


def _fresh_db(calls: pa.Table):
    """A migrated DB whose llm_calls holds ``calls``. The bulk load skips the primary-key index (speed only)."""
    path = Path(tempfile.mkdtemp()) / "bench.duckdb"
    con = open_db(path)
    con.register("_calls", calls)
    con.execute("DROP TABLE llm_calls")
    con.execute("CREATE TABLE llm_calls AS SELECT * FROM _calls")
    con.unregister("_calls")
    return con


def _shifts(rng: np.random.Generator, n_series: int, first: int, days: int, offset: int) -> list[Shift]:
    out = []
    for s in range(n_series):
        day = first + rng.uniform(0, 1)
        while day < days - 1:
            start = START + timedelta(days=float(day))
            start = start.replace(minute=0, second=0, microsecond=0)
            out.append(Shift(offset + s, start, int(rng.choice([3600, 7200, 10800])),
                             float(rng.choice([1.3, 1.15])), str(rng.choice(["e2e", "ttft"]))))  # fmt: skip
            day += rng.uniform(2.0, 3.0)
    return out


def quality(days: int, per_level: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    specs, shifts, kind = [], [], []
    for rate in LEVELS:
        for role in ("stationary", "shifted"):
            for _ in range(per_level):
                kind.append((rate, role))
                specs.append(SeriesSpec(service=f"{role}-{rate}-{len(specs)}", rate=rate))
    for i, (_, role) in enumerate(kind):
        if role == "shifted":
            shifts += _shifts(rng, 1, 8, days, i)
    t0 = time.perf_counter()
    calls = generate_calls(specs, days=days, shifts=tuple(shifts), seed=seed)
    con = _fresh_db(calls)
    print(f"{calls.num_rows:,} calls generated+loaded in {time.perf_counter() - t0:.1f}s")
    summary = run_attribution(con, config=DetectionConfig())
    print("run:", {k: round(v, 2) for k, v in summary.timings.items()})
    regs = list_regressions(con, detail=True)
    alarms = {r[0]: (r[1], r[2]) for r in con.execute(
        "SELECT r.id, r.detected_at, min(e.grain_s) FROM regressions r JOIN episodes e ON e.regression_id = r.id "
        "GROUP BY ALL").fetchall()}  # fmt: skip
    _report(specs, kind, shifts, regs, days, alarms)


def _report(
    specs: list[SeriesSpec], kind: list, shifts: list[Shift], regs: list[dict], days: int, alarms: dict
) -> None:
    by_service: dict[str, list[dict]] = {}
    for r in regs:
        by_service.setdefault(r["series"]["service"], []).append(r)
    warm = 2  # days before any baseline exists
    weeks = (days - warm) / 7
    rows = []
    for rate in LEVELS:
        stat = [s.service for s, k in zip(specs, kind, strict=True) if k == (rate, "stationary")]
        false = sum(len(by_service.get(s, [])) for s in stat)
        rows.append({"calls/s": rate, "calls/5min": round(rate * 300),
                     "false/series-week": round(false / (len(stat) * weeks), 3)})  # fmt: skip
        for factor in (1.3, 1.15):
            for fam in ("e2e", "ttft"):
                hits, delays = _match(specs, [s for s in shifts if s.factor == factor and s.family == fam
                                              and specs[s.series].rate == rate], by_service, alarms)  # fmt: skip
                rows[-1][f"{fam}+{round((factor - 1) * 100)}% det"] = hits
                rows[-1][f"{fam}+{round((factor - 1) * 100)}% delay"] = delays
    print(pd.DataFrame(rows).to_string(index=False))


def _match(
    specs: list[SeriesSpec], shifts: list[Shift], by_service: dict[str, list[dict]], alarms: dict
) -> tuple[str, str]:
    """Shifts overlapped by a regression of their series, and alarm delay in buckets after the first shifted one."""
    found, delays = 0, []
    for s in shifts:
        lo, hi = s.start, s.start + timedelta(seconds=s.duration_s)
        for r in by_service.get(specs[s.series].service, []):
            start = pd.Timestamp(r["start"]).to_pydatetime()
            end = pd.Timestamp(r["end"]).to_pydatetime() if r["end"] else None
            if start < hi and (end is None or end > lo):
                found += 1
                detected_at, grain = alarms[r["id"]]
                # detected_at is the end of the alarm bucket: alarm in the first shifted bucket = delay 0.
                delays.append((pd.Timestamp(detected_at) - pd.Timestamp(lo)).total_seconds() / grain - 1)
                break
    med = f"{np.nanmedian(delays):.0f}" if delays else "-"
    within2 = f"{np.sum(np.array(delays) <= 2)}/{len(shifts)}" if delays else "-"
    return f"{found}/{len(shifts)}", f"med {med}, ≤2: {within2}"


def simulator(days: float, n_series: int, seed: int) -> None:
    """Detection against the labelled episodes of attribution/simulate.py (when it is present)."""
    from spanprism.attribution.simulator.simulate import SimulationConfig, simulate

    t0 = time.perf_counter()
    result = simulate(SimulationConfig(seed=seed, days=days, series=n_series, clean_days=2.0, rate_max=2.0))
    con = _fresh_db(result.calls)
    print(f"simulator: {result.calls.num_rows:,} calls, {len(result.labels)} labelled windows "
          f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    summary = run_attribution(con)
    print("run:", {k: round(v, 2) for k, v in summary.timings.items()})
    regs = list_regressions(con)
    rows, used = [], set()
    for label in result.labels:
        key = tuple(label["series"][k] for k in ("service", "provider", "model", "operation"))
        lo, hi = pd.Timestamp(label["start"]), pd.Timestamp(label["end"])
        hits = [r for r in regs if tuple(r["series"][k] for k in ("service", "provider", "model", "operation")) == key
                and pd.Timestamp(r["start"]) < hi and (r["end"] is None or pd.Timestamp(r["end"]) > lo)]  # fmt: skip
        used.update(r["id"] for r in hits)
        rows.append({"label": label["label"], "reason": label["reason"], "strength": label["strength"],
                     "detected": bool(hits)})  # fmt: skip
    table = pd.DataFrame(rows)
    print(table.groupby(["label", "strength"])["detected"].agg(["sum", "count"]).to_string())
    unmatched = [r for r in regs if r["id"] not in used]
    series_weeks = n_series * (days - 2) / 7
    print(f"regressions outside any labelled window: {len(unmatched)} ({len(unmatched) / series_weeks:.2f} per "
          f"series-week over the evaluated {days - 2:g} days)")  # fmt: skip


def performance(n_series: int, days: int, n_calls: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path = Path(tempfile.mkdtemp()) / "perf.duckdb"
    con = open_db(path)
    t0 = time.perf_counter()
    for grain in (300, 3600):
        table = synthetic_rollups(rng, n_series, days, grain)
        con.register("_r", table)
        con.execute("INSERT INTO series_rollups BY NAME SELECT * FROM _r")
        con.unregister("_r")
    con.execute("INSERT INTO series (series_key, service) SELECT DISTINCT series_key, series_key FROM series_rollups")
    print(f"generated {n_series} series × {days} days of rollups in {time.perf_counter() - t0:.1f}s")
    load = os.getloadavg()[0]
    t1, cpu1 = time.perf_counter(), time.process_time()
    summary = run_attribution(con)
    total, cpu = time.perf_counter() - t1, time.process_time() - cpu1
    # CPU seconds as well: the machine is shared, and the wall time then measures the neighbours too.
    print(f"baselines+detection: {total:.1f}s ({cpu:.1f}s CPU, {1000 * cpu / n_series:.1f} ms CPU per series; load "
          f"average {load:.2f} → {os.getloadavg()[0]:.2f})  {summary}")  # fmt: skip
    con.close()
    per_call_timing(n_series, days, seed)
    rollup_sql(n_calls, seed)


def per_call_timing(n_series: int, days: int, seed: int) -> None:
    """Time per-call detection of the fleet's sparse series (the rollup-only fleet above has no calls to read).

    Same rate law as :func:`synthetic_rollups` (log-uniform 0.01–100 calls/s); the series under
    ``PerCallConfig.sparse_below`` calls an hour get log-normal calls with tokens, tested over ``days``.
    """
    from spanprism.attribution.detection.per_call import detect_calls
    from spanprism.attribution.detection.per_call_config import PerCallConfig

    calls, n_sparse, start = sparse_calls(n_series, days, seed, PerCallConfig().sparse_below)
    t0, cpu0 = time.perf_counter(), time.process_time()
    found = detect_calls(calls, eval_from_s=start, horizon_s=start + days * 86400)
    print(f"per-call detection: {n_sparse} sparse series ({len(calls):,} calls) in {time.perf_counter() - t0:.1f}s "
          f"({time.process_time() - cpu0:.1f}s CPU, load average {os.getloadavg()[0]:.2f}), {len(found)} episodes on "
          f"stationary calls")  # fmt: skip


def sparse_calls(n_series: int, days: int, seed: int, sparse_below: float) -> tuple[pd.DataFrame, int, int]:
    """The calls of the fleet's sparse series (those under ``sparse_below`` calls an hour): log-normal latencies
    and tokens over ``days``. Returns the calls, the number of sparse series and the start (epoch s)."""
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.uniform(np.log(0.01), np.log(100), n_series)) * 3600
    sparse = rate[rate < sparse_below]
    start = 1_772_409_600
    parts = []
    for i, per_hour in enumerate(sparse):
        n = rng.poisson(per_hour * 24 * days)
        out, tin = rng.lognormal(5, 0.6, n), rng.lognormal(7.5, 0.4, n)
        ttft, itl = rng.lognormal(6, 0.3, n), rng.lognormal(3, 0.25, n)
        parts.append(pd.DataFrame({"series_key": f"s{i:05d}", "t": np.sort(rng.uniform(0, days * 86400, n)) + start,
                                   "duration_ms": ttft + out * itl, "ttft_ms": ttft, "itl_ms": itl,
                                   "input_tokens": tin, "output_tokens": out}))  # fmt: skip
    return (pd.concat(parts) if parts else pd.DataFrame()), len(sparse), start


def synthetic_rollups(rng: np.random.Generator, n_series: int, days: int, grain: int) -> pa.Table:
    """Bucket statistics with log-normal sampling noise for series from 0.01 to 100 calls/s."""
    n_buckets = days * 86400 // grain
    ts = 1_772_409_600 + grain * np.arange(n_buckets)  # 2026-03-02
    rate = np.exp(rng.uniform(np.log(0.01), np.log(100), n_series))
    hours = (ts % 86400) / 3600
    cycle = np.sin(2 * np.pi * (hours - 9) / 24)
    n = rng.poisson(np.outer(rate * grain, 1 + 0.6 * cycle)).astype(np.float64)
    level = rng.uniform(np.log(300), np.log(3000), n_series)[:, None] + 0.06 * cycle
    sd = 0.45 / np.sqrt(np.maximum(n, 1))
    cols: dict[str, np.ndarray] = {}
    for fam, base in (("e2e", 0.0), ("ttft", -1.2), ("itl", -3.5)):
        for stat, off, k in (("p95", 0.74, 2.1), ("p50", 0.0, 1.25), ("gmean", -0.05, 1.0)):
            value = np.exp(level + base + off + k * sd * rng.standard_normal(n.shape))
            cols[f"{fam}_{stat}_ms"] = np.where(n > 0, value, np.nan).ravel()
    keys = np.repeat(np.array([f"{i:016x}" for i in range(n_series)]), n_buckets)
    zeros = np.zeros(n.size, dtype=np.int64)
    return pa.table({
        "series_key": keys, "grain_s": np.full(n.size, grain, dtype=np.int32),
        "bucket_start": pa.array(np.tile(ts, n_series) * 1_000_000, pa.timestamp("us", tz="UTC")),
        "n_calls": n.ravel().astype(np.int64), "n_errors": zeros, "n_ttft": n.ravel().astype(np.int64),
        "n_itl": n.ravel().astype(np.int64), "n_queue": zeros, "n_cache_reported": zeros, "n_cache_eligible": zeros,
        **{k: pa.array(v, from_pandas=True) for k, v in cols.items()},
    }).filter(pa.array(n.ravel() > 0))  # fmt: skip


def rollup_sql(n_calls: int, seed: int) -> None:
    """Time refresh_rollups on ``n_calls`` real calls spread over 100 series and 7 days."""
    from spanprism.attribution.store.rollups import refresh_rollups

    rate = n_calls / (100 * 7 * 86400)
    specs = [SeriesSpec(service=f"svc{i % 10}", model=f"m{i // 10}", rate=rate) for i in range(100)]
    calls = generate_calls(specs, days=7, seed=seed)
    con = _fresh_db(calls)
    t0 = time.perf_counter()
    result = refresh_rollups(con)
    dt = time.perf_counter() - t0
    print(f"rollup SQL: {calls.num_rows:,} calls → {result.rows_written:,} rollup rows in {dt:.1f}s "
          f"({calls.num_rows / dt / 1e6:.2f} M calls/s, grains 300+3600 s, route mix included)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality", action="store_true", help="run the detection-quality benchmark")
    parser.add_argument("--series", type=int, default=0, help="performance: number of series")
    parser.add_argument("--days", type=int, default=28, help="days of data")
    parser.add_argument("--per-level", type=int, default=4, help="quality: series per traffic level and role")
    parser.add_argument("--calls", type=int, default=3_000_000, help="performance: calls for the rollup SQL timing")
    parser.add_argument("--simulator", action="store_true", help="score against attribution/simulate.py labels")
    parser.add_argument("--sim-series", type=int, default=8, help="simulator: number of series")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.simulator:
        simulator(float(args.days), args.sim_series, args.seed)
    elif args.series:
        performance(args.series, args.days, args.calls, args.seed)
    else:
        quality(args.days, args.per_level, args.seed)


if __name__ == "__main__":
    main()
