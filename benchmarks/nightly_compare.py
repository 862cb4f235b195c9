"""The nightly pass of two code versions, back to back on the same data: seconds, CPU seconds and results.

Each version runs in its own process over the same seeded fleet as ``attribute.py --series N --days D``
(rollups of N series × D days at 5 min and 1 h, then baselines + detection, then per-call detection of the
fleet's sparse series). The base version is ``git archive``d from a ref into a temp dir and imported from there;
the other is this checkout. Wall time, process CPU time and the load average are printed per run (the machine is
shared: CPU seconds are the fairer number), then whether the two produced the same episodes, regression records
and baselines (every field; floats to 1e-9 relative). Exit status 1 if they differ.

    .venv/bin/python benchmarks/nightly_compare.py --base main --series 1000 --days 30
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def child(out: Path, n_series: int, days: int, seed: int) -> None:
    """One version's nightly pass (this runs inside the version's interpreter path)."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from attribute import synthetic_rollups

    from spanprism.api.storage.connect import open_db
    from spanprism.attribution.detection.per_call import PerCallConfig, detect_calls
    from spanprism.attribution.passes.detect_pass import run_attribution

    rng = np.random.default_rng(seed)
    con = open_db(Path(tempfile.mkdtemp()) / "nightly.duckdb")
    for grain in (300, 3600):
        con.register("_r", synthetic_rollups(rng, n_series, days, grain))
        con.execute("INSERT INTO series_rollups BY NAME SELECT * FROM _r")
        con.unregister("_r")
    con.execute("INSERT INTO series (series_key, service) SELECT DISTINCT series_key, series_key FROM series_rollups")
    load0 = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = run_attribution(con)
    buckets_s, buckets_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    result = snapshot(con)
    con.close()
    # The per-call part, as attribute.py's per_call_timing: the fleet's sparse series with calls and tokens.
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.uniform(np.log(0.01), np.log(100), n_series)) * 3600
    sparse = rate[rate < PerCallConfig().sparse_below]
    start = 1_772_409_600
    parts = []
    for i, per_hour in enumerate(sparse):
        n = rng.poisson(per_hour * 24 * days)
        o, tin = rng.lognormal(5, 0.6, n), rng.lognormal(7.5, 0.4, n)
        ttft, itl = rng.lognormal(6, 0.3, n), rng.lognormal(3, 0.25, n)
        parts.append(pd.DataFrame({"series_key": f"s{i:05d}", "t": np.sort(rng.uniform(0, days * 86400, n)) + start,
                                   "duration_ms": ttft + o * itl, "ttft_ms": ttft, "itl_ms": itl,
                                   "input_tokens": tin, "output_tokens": o}))  # fmt: skip
    calls = pd.concat(parts) if parts else pd.DataFrame()
    t1, cpu1 = time.perf_counter(), time.process_time()
    found = detect_calls(calls, eval_from_s=start, horizon_s=start + days * 86400) if len(calls) else []
    calls_s, calls_cpu = time.perf_counter() - t1, time.process_time() - cpu1
    result["per_call"] = [json.loads(json.dumps(dataclasses.asdict(e), default=str)) for e in found]
    code = run_attribution.__code__.co_filename.rsplit("/attribution/", 1)[0]
    timing = {"code": code, "load_before": load0, "load_after": os.getloadavg()[0],
              "detect_s": buckets_s, "detect_cpu_s": buckets_cpu, "per_call_s": calls_s, "per_call_cpu_s": calls_cpu,
              "sparse_series": len(sparse), "calls": len(calls), "stage_s": summary.timings}  # fmt: skip
    out.write_text(json.dumps({"timing": timing, "result": result}))


def snapshot(con) -> dict[str, list[dict[str, Any]]]:
    """Every stored episode, regression and baseline, JSON columns parsed, ``updated_at`` (the run's clock) left out.

    (The same as the golden test's ``tests/support/detection_snapshot.py``: benchmarks import nothing from tests.)
    """
    import orjson

    out: dict[str, list[dict[str, Any]]] = {}
    for table, order in (("episodes", "id"), ("regressions", "id"), ("baselines", "series_key, metric")):
        cur = con.execute(f"SELECT * EXCLUDE (updated_at) FROM {table} ORDER BY {order}")
        names = [d[0] for d in cur.description]
        rows = []
        for row in cur.fetchall():
            item = {n: _plain(v) for n, v in zip(names, row, strict=True)}
            for n in ("stats", "metrics", "params"):
                if isinstance(item.get(n), str):
                    item[n] = orjson.loads(item[n])
            rows.append(item)
        out[table] = rows
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def differences(got: Any, want: Any, where: str = "", rel: float = 0.0) -> list[str]:
    """Paths where ``got`` and ``want`` differ (floats within ``rel`` relative count as equal)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}.{k}: missing" for k in want if k not in got]
        out += [f"{where}.{k}: unexpected" for k in got if k not in want]
        for k in want:
            if k in got:
                out += differences(got[k], want[k], f"{where}.{k}", rel)
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} rows, expected {len(want)}"]
        return [
            d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in differences(g, w, f"{where}[{i}]", rel)
        ]
    if isinstance(want, float) and isinstance(got, float | int) and not isinstance(got, bool):
        if got == want or abs(got - want) <= rel * max(abs(got), abs(want)):
            return []
    elif got == want:
        return []
    return [f"{where}: {got!r} != {want!r}"]


def _run(label: str, pythonpath: str | None, out: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath  # ahead of the editable install: this tree's spanprism is imported
    cmd = [sys.executable, __file__, "--child", str(out), "--series", str(args.series), "--days", str(args.days),
           "--seed", str(args.seed)]  # fmt: skip
    subprocess.run(cmd, env=env, check=True)
    data = json.loads(out.read_text())
    t = data["timing"]
    total, cpu = t["detect_s"] + t["per_call_s"], t["detect_cpu_s"] + t["per_call_cpu_s"]
    print(f"{label:>8}: baselines+detection {t['detect_s']:6.1f} s ({t['detect_cpu_s']:6.1f} s CPU) + per-call "
          f"{t['per_call_s']:5.1f} s ({t['per_call_cpu_s']:5.1f} s CPU; {t['sparse_series']} series, {t['calls']:,} "
          f"calls) = {total:6.1f} s, {cpu:6.1f} s CPU, {1000 * cpu / args.series:.1f} ms CPU per series; load average "
          f"{t['load_before']:.2f} → {t['load_after']:.2f}  [{t['code']}]", flush=True)  # fmt: skip
    return data


def _extract(ref: str) -> Path:
    """The tree of ``ref`` as an importable ``spanprism`` package in a temp dir (returns the dir)."""
    work = Path(tempfile.mkdtemp())
    (work / "spanprism").mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work / "spanprism")], input=archive, check=True)
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git ref of the version to compare against")
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--head", help="git ref to run instead of this checkout's files (e.g. HEAD while editing)")
    parser.add_argument("--rounds", type=int, default=1, help="base/this pairs, alternating")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.series, args.days, args.seed)
        return
    base, head = _extract(args.base), _extract(args.head) if args.head else None
    this = args.head or "this checkout"
    print(f"{args.series} series × {args.days} days; base {args.base} vs {this}, {os.cpu_count()} cores")
    results = {}
    for r in range(args.rounds):
        results["base"] = _run(args.base, str(base), base / f"base{r}.json", args)["result"]
        results["this"] = _run(args.head or "this", head and str(head), base / f"this{r}.json", args)["result"]
    diff = differences(results["this"], results["base"], rel=1e-9)
    counts = {k: len(v) for k, v in results["base"].items()}
    if diff:
        print(f"RESULTS DIFFER ({len(diff)}): {diff[:20]}")
        sys.exit(1)
    print(f"same results: {counts}")


if __name__ == "__main__":
    main()
