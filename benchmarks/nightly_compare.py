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
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load_snapshot() -> ModuleType:
    """This checkout's ``attribution/evaluation/snapshot.py``, loaded by path: a child process imports the base
    version's ``spanprism`` (PYTHONPATH), which may predate the module, and both runs must be read the same way."""
    spec = importlib.util.spec_from_file_location("detection_snapshot", ROOT / "attribution/evaluation/snapshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(out: Path, n_series: int, days: int, seed: int) -> None:
    """One version's nightly pass (this runs inside the version's interpreter path)."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from attribute import sparse_calls, synthetic_rollups

    from spanprism.api.storage.connect import open_db
    from spanprism.attribution.detection.per_call import detect_calls
    from spanprism.attribution.detection.per_call_config import PerCallConfig
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
    result = _load_snapshot().snapshot(con)
    con.close()
    # The per-call part, as attribute.py's per_call_timing: the fleet's sparse series with calls and tokens.
    calls, n_sparse, start = sparse_calls(n_series, days, seed, PerCallConfig().sparse_below)
    t1, cpu1 = time.perf_counter(), time.process_time()
    found = detect_calls(calls, eval_from_s=start, horizon_s=start + days * 86400) if len(calls) else []
    calls_s, calls_cpu = time.perf_counter() - t1, time.process_time() - cpu1
    result["per_call"] = [json.loads(json.dumps(dataclasses.asdict(e), default=str)) for e in found]
    code = run_attribution.__code__.co_filename.rsplit("/attribution/", 1)[0]
    timing = {"code": code, "load_before": load0, "load_after": os.getloadavg()[0],
              "detect_s": buckets_s, "detect_cpu_s": buckets_cpu, "per_call_s": calls_s, "per_call_cpu_s": calls_cpu,
              "sparse_series": n_sparse, "calls": len(calls), "stage_s": summary.timings}  # fmt: skip
    out.write_text(json.dumps({"timing": timing, "result": result}))


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
    diff = _load_snapshot().differences(results["this"], results["base"], rel=1e-9)
    counts = {k: len(v) for k, v in results["base"].items()}
    if diff:
        print(f"RESULTS DIFFER ({len(diff)}): {diff[:20]}")
        sys.exit(1)
    print(f"same results: {counts}")


if __name__ == "__main__":
    main()
