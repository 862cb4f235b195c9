"""Detection recall and false alarms on the realistic simulator, through the real product path.

For each seed: ``attribution/simulate.py`` writes OTLP span exports + ``labels.jsonl`` (``api.cli.evaluation``),
the real ingest pipeline loads them into a DuckDB file, ``run_attribution`` detects, and
``evaluation.scoring.score`` matches the stored regression records against the injected episodes. Prints recall
over all injected episodes, recall over the episodes whose p95 moved ≥ 15 % (as the simulator measured it),
false alarms per series-week, and recall per scenario family; ``--misses`` lists every missed episode.

Folders and the ingested database are kept under ``--out`` (one sub-folder per seed and size), so a second run
re-uses them and only re-runs detection (on a fresh copy of the ingested file): ~2 s instead of ~90 s a seed.

    .venv/bin/python benchmarks/detection_eval.py --seeds 21 22 23
    .venv/bin/python benchmarks/detection_eval.py --seeds 31 --rate-min 0.2 --rate-max 2.0 --misses
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spanprism.api.cli.evaluation import evaluate_folder, read_labels, write_simulation
from spanprism.api.storage.connect import open_db
from spanprism.attribution.detection.episodes import DetectionConfig
from spanprism.attribution.detection.per_call_config import PerCallConfig
from spanprism.attribution.evaluation.pooled import per_family, target_recall
from spanprism.attribution.evaluation.scoring import Score, moved_pct, score
from spanprism.attribution.evaluation.scoring import _overlaps as overlaps
from spanprism.attribution.passes.detect_pass import run_attribution
from spanprism.attribution.simulator.simulate import SimulationConfig
from spanprism.attribution.store.records import list_regressions

#: Tables the attribution job writes; cleared in the working copy so every run starts from ingested calls only.
DERIVED_TABLES = ("episodes", "regressions", "baselines", "series_rollups", "rollup_dimensions", "rollup_batches",
                  "series")  # fmt: skip


def _no_attribution(con: Any, since: Any, until: Any) -> dict:
    return {}


def prepare(folder: Path, config: SimulationConfig, workers: int) -> Path:
    """Simulated exports and an ingested DuckDB file for ``config`` (created once, then re-used)."""
    if not (folder / "config.json").exists():
        write_simulation(folder, config)
    ingested = folder / "ingested.duckdb"
    if not ingested.exists():
        evaluate_folder(folder, folder / "ingesting.duckdb", attribute_fn=_no_attribution, workers=workers)
        (folder / "ingesting.duckdb").rename(ingested)
    return ingested


#: A false alarm on a series whose own median prompt or output size moved this much is a cause (issue 11), not noise.
OWN_TOKEN_CHANGE = 0.25


def own_token_change(con: Any, record: dict, labels: list[dict], horizon: datetime) -> bool:
    """Is ``record`` a false alarm (as :func:`score` counts them) that coincides with ≥ 25 % growth of its series'
    own median input or output tokens (window against the 3 days before)? Such a report is right if labelled so."""
    service = record["series"]["service"]
    real = [lab for lab in labels if lab["label"] != "none" and lab["series"]["service"] == service]
    if any(overlaps(record, lab, timedelta(minutes=30), horizon) for lab in real):
        return False
    start = datetime.fromisoformat(record["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(record["end"].replace("Z", "+00:00")) if record["end"] else horizon
    sql = ("SELECT median(input_tokens), median(output_tokens) FROM llm_calls WHERE service = ?"
           " AND start_time >= ? AND start_time < ?")  # fmt: skip
    during = con.execute(sql, [service, start, end]).fetchall()[0]
    before = con.execute(sql, [service, start - timedelta(days=3), start]).fetchall()[0]
    return any(d is not None and b and d / b - 1 >= OWN_TOKEN_CHANGE for d, b in zip(during, before, strict=True))


def detect(folder: Path, ingested: Path, *, per_call: bool = True) -> tuple[Score, list[dict], list[dict], float]:
    """Run ``run_attribution`` on a fresh copy of the ingested file and score it against the labels."""
    work = folder / "eval.duckdb"
    work.unlink(missing_ok=True)
    shutil.copyfile(ingested, work)
    con = open_db(work)
    try:
        for table in DERIVED_TABLES:
            present = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                                  [table]).fetchall()[0][0]  # fmt: skip
            if present:
                con.execute(f"DELETE FROM {table}")
        t0 = time.perf_counter()
        if per_call:
            run_attribution(con)
        else:  # detection as it was before issue 11: buckets only, episodes never accepted
            run_attribution(con, config=DetectionConfig(accept_after_s=10**9), per_call=PerCallConfig(sparse_below=0))
        seconds = time.perf_counter() - t0
        records = list_regressions(con)
        labels = read_labels(folder)
        meta = con.execute("SELECT max(start_time), count(DISTINCT service) FROM llm_calls").fetchall()[0]
        own = sum(own_token_change(con, r, labels, meta[0] + timedelta(seconds=1)) for r in records)
        rates = dict(con.execute("SELECT service, count(*) / (epoch(max(start_time)) - epoch(min(start_time))) "
                                 "FROM llm_calls GROUP BY 1").fetchall())  # fmt: skip
    finally:
        con.close()
    days = SimulationConfig.from_dict(_config(folder)).days
    result = score(records, labels, series_weeks=meta[1] * days / 7.0, horizon=meta[0] + timedelta(seconds=1))
    for label in labels:
        label["_rate"] = rates.get(label["series"]["service"])
    result.own_token_reports = own  # type: ignore[attr-defined]
    return result, labels, records, seconds


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["simulation"]


def print_misses(labels: list[dict], result: Score) -> None:
    """One line per injected episode no regression overlapped: family, series, p95 move, duration, ramp, rate."""
    injected = [lab for lab in labels if lab["label"] != "none"]
    for label, pair in zip(injected, result.pairs, strict=True):
        if pair["predicted"] is None:
            moved = moved_pct(label)
            hours = (_ts(label["end"]) - _ts(label["start"])) / 3600
            shown = "?" if moved is None else f"{moved:+.0f}%"
            print(
                f"    MISS {label['family']:40s} {label['series']['service']:14s} moved {shown:>6s} {hours:.1f} h "
                f"ramp {label.get('ramp_s', 0) / 60:.0f} min rate {label['_rate']:.3f}/s {label['start']}"
            )


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[21, 22, 23])
    parser.add_argument("--days", type=float, default=4.0)
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--rate-min", type=float, default=0.05, help="calls/s of the slowest series")
    parser.add_argument("--rate-max", type=float, default=0.4, help="calls/s of the busiest series")
    parser.add_argument("--out", type=Path, default=Path("/tmp/spanprism-detection-eval"))
    parser.add_argument("--workers", type=int, default=2, help="ingest worker processes")
    parser.add_argument("--misses", action="store_true", help="list every missed episode")
    parser.add_argument(
        "--no-per-call", action="store_true", help="detection before issue 11: buckets only, no acceptance"
    )
    parser.add_argument("--prepare-only", action="store_true", help="simulate and ingest, do not detect")
    args = parser.parse_args()
    totals: Counter[str] = Counter()
    families: dict[str, list[int]] = {}
    for seed in args.seeds:
        config = SimulationConfig(seed=seed, days=args.days, series=args.series, rate_min=args.rate_min,
                                  rate_max=args.rate_max)  # fmt: skip
        folder = args.out / f"seed{seed}-d{args.days:g}-s{args.series}-r{args.rate_min:g}-{args.rate_max:g}"
        ingested = prepare(folder, config, args.workers)
        if args.prepare_only:
            print(f"seed {seed}: ready in {folder}")
            continue
        result, labels, _, seconds = detect(folder, ingested, per_call=not args.no_per_call)
        d = result.as_dict()
        print(f"seed {seed}: detected {d['detected']}/{d['injected']} = {d['detection_recall']:.2f}, "
              f"p95 moved ≥15%: {result.detected_big}/{result.injected_big} = "
              f"{d['detection_recall_p95_moved_15pct']:.2f}, false alarms {result.false_alarms} "
              f"({d['false_alarms_per_series_week']:.2f}/series-week; {result.own_token_reports} of them on ≥ 25 % own "
              f"token growth), detection {seconds:.1f}s")  # fmt: skip
        det30, inj30 = target_recall(labels, result)
        print(f"    p95 moved ≥ 30 % for ≥ 2 h over ≥ 60 calls: {det30}/{inj30}")
        totals.update({"det30": det30, "inj30": inj30})
        if args.misses:
            print_misses(labels, result)
        totals.update({"det": result.detected, "inj": result.injected, "det_big": result.detected_big,
                       "inj_big": result.injected_big, "fa": result.false_alarms,
                       "own": result.own_token_reports})  # fmt: skip
        totals["weeks"] += result.series_weeks  # type: ignore[assignment]
        for fam, row in per_family(labels, result).items():
            acc = families.setdefault(fam, [0, 0, 0, 0])
            families[fam] = [a + b for a, b in zip(acc, row, strict=True)]
    if args.prepare_only:
        return
    recall, recall_big = totals["det"] / max(totals["inj"], 1), totals["det_big"] / max(totals["inj_big"], 1)
    print(f"\nALL: recall {totals['det']}/{totals['inj']} = {recall:.2f}, "
          f"p95 moved ≥15%: {totals['det_big']}/{totals['inj_big']} = {recall_big:.2f}, "
          f"false alarms {totals['fa']} = {totals['fa'] / max(totals['weeks'], 1e-9):.2f}/series-week, "
          f"{totals['fa'] - totals['own']} = {(totals['fa'] - totals['own']) / max(totals['weeks'], 1e-9):.2f}"
          f"/series-week matching no ≥ 25 % own token growth either; p95 moved ≥ 30 % for ≥ 2 h over ≥ 60 calls: "
          f"{totals['det30']}/{totals['inj30']}")  # fmt: skip
    print(f"{'family':42s} {'recall':>8s} {'≥15%':>8s}")
    for fam in sorted(families):
        det, inj, det_big, inj_big = families[fam]
        print(f"{fam:42s} {f'{det}/{inj}':>8s} {f'{det_big}/{inj_big}':>8s}")


if __name__ == "__main__":
    main()
