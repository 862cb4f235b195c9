"""End-to-end accuracy on held-out simulated workloads: detection AND attribution through the real product path.

Per seed: simulated OTLP exports (``api.cli.evaluation.write_simulation``) → the real ingest pipeline → detection →
the shipped classifier (``api.cli.attribution.attribute``) → ``attribution.evaluation.scoring.score`` against
``labels.jsonl``. The seeds default to ones used neither for training the classifier (1000–1039) nor for tuning
detection (11, 12). Prints pooled detection recall, false alarms per series-week, per-class precision/recall/F1
on detected episodes, the confusion matrix and reason accuracy; ``--json`` writes them too.

    .venv/bin/python benchmarks/evaluate.py --seeds 21 22 23 --out /tmp/spanprism-eval
    .venv/bin/python benchmarks/evaluate.py --seeds 31 --rate-min 0.2 --rate-max 2.0
    .venv/bin/python benchmarks/evaluate.py --seeds 41 --conventions all
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks")]  # sibling benchmark modules

from detection_eval import DERIVED_TABLES, prepare  # noqa: E402

from spanprism.api.cli.attribution import attribute  # noqa: E402
from spanprism.api.cli.evaluation import ALL_CONVENTIONS, RICH_CONVENTIONS, read_labels, write_simulation  # noqa: E402
from spanprism.api.cli.sim import print_score  # noqa: E402
from spanprism.api.storage.connect import open_db  # noqa: E402
from spanprism.attribution.evaluation.pooled import pool  # noqa: E402
from spanprism.attribution.evaluation.scoring import Score, score  # noqa: E402
from spanprism.attribution.simulator.simulate import SimulationConfig  # noqa: E402
from spanprism.attribution.store.records import list_regressions  # noqa: E402

ATTRIBUTION_TABLES = ("regression_attributions",)


@dataclass
class ProductRun:
    """What the product stored for one simulated folder: records, the data's horizon and each series' first call."""

    records: list[dict[str, Any]]
    horizon: datetime
    first_call: dict[str, datetime]
    calls: int
    seconds: float
    measured: Any = None  # what ``inspect`` returned

    def series_weeks(self) -> float:
        """Series-weeks actually observed (a series that starts mid-window counts from its first call)."""
        return sum((self.horizon - t).total_seconds() for t in self.first_call.values()) / (7 * 86400.0)


def run_product(
    folder: Path, ingested: Path, classifier: Path | None = None, inspect: Callable[[Any, list], Any] | None = None
) -> ProductRun:
    """Detect and attribute (``spanprism attribute``) on a fresh copy of the ingested file; read the records back.

    ``inspect(con, records)`` may measure more on the attributed database before it is closed.
    """
    work = folder / "e2e.duckdb"
    work.unlink(missing_ok=True)
    shutil.copyfile(ingested, work)
    con = open_db(work)
    try:
        for table in (*DERIVED_TABLES, *ATTRIBUTION_TABLES):
            con.execute(f"DELETE FROM {table}")
        t0 = time.perf_counter()
        attribute(con, since=None, until=None, classifier=classifier)
        seconds = time.perf_counter() - t0
        records = list_regressions(con, detail=True)  # detail: each episode's own start and end
        horizon, n = con.execute("SELECT max(start_time), count(*) FROM llm_calls").fetchall()[0]
        first = dict(con.execute("SELECT service, min(start_time) FROM llm_calls GROUP BY 1").fetchall())
        measured = inspect(con, records) if inspect is not None else None
    finally:
        con.close()
    return ProductRun(records, horizon + timedelta(seconds=1), first, n, seconds, measured)


def run_seed(folder: Path, ingested: Path, days: float, classifier: Path | None = None) -> Score:
    """Detect and attribute on a fresh copy of the ingested file, then score."""
    run = run_product(folder, ingested, classifier)
    weeks = len(run.first_call) * days / 7.0
    return score(run.records, read_labels(folder), series_weeks=weeks, horizon=run.horizon)


def _conventions(spec: str) -> tuple[str, ...]:
    """``rich`` / ``all`` / a comma-separated list → the conventions series are recorded with."""
    named = {"rich": RICH_CONVENTIONS, "all": ALL_CONVENTIONS}
    chosen = named.get(spec) or tuple(spec.split(","))
    unknown = set(chosen) - set(ALL_CONVENTIONS)
    if unknown:
        raise SystemExit(f"unknown conventions {sorted(unknown)}; known: {', '.join(ALL_CONVENTIONS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[21, 22, 23])
    parser.add_argument("--days", type=float, default=4.0)
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--rate-min", type=float, default=0.05)
    parser.add_argument("--rate-max", type=float, default=0.4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/spanprism-detection-eval"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the pooled numbers here")
    parser.add_argument("--classifier", type=Path, help="classifier artifact (default: the shipped one)")
    parser.add_argument(
        "--conventions",
        default="rich",
        help="'rich' (default), 'all' or a comma-separated list: how each series is recorded",
    )
    args = parser.parse_args()
    conventions = _conventions(args.conventions)
    scores = []
    for seed in args.seeds:
        config = SimulationConfig(seed=seed, days=args.days, series=args.series, rate_min=args.rate_min,
                                  rate_max=args.rate_max)  # fmt: skip
        folder = args.out / f"seed{seed}-d{args.days:g}-s{args.series}-r{args.rate_min:g}-{args.rate_max:g}"
        if conventions != RICH_CONVENTIONS:
            folder = folder.with_name(f"{folder.name}-c{args.conventions.replace(',', '+')}")
        if not (folder / "config.json").exists():  # prepare() would write the default conventions
            write_simulation(folder, config, conventions)
        result = run_seed(folder, prepare(folder, config, args.workers), args.days, args.classifier)
        d = result.as_dict()
        print(f"seed {seed}: detected {result.detected}/{result.injected}, false alarms {result.false_alarms}, "
              f"label accuracy on detected {d['label_accuracy_on_detected']:.2f}")  # fmt: skip
        scores.append(result)
    pooled = pool(scores)
    print_score(pooled)
    if args.json:
        args.json.write_text(json.dumps({**pooled.as_dict(), "seeds": args.seeds}, indent=2))


if __name__ == "__main__":
    main()
