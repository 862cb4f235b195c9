"""CLI commands around simulated, labelled workloads: ``simulate``, ``evaluate`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from rich.table import Table

from spanprism.api.cli.attribution import attribute, print_report
from spanprism.api.cli.data import console, out
from spanprism.api.cli.evaluation import ALL_CONVENTIONS, RICH_CONVENTIONS, evaluate_folder, write_simulation
from spanprism.api.settings import Settings
from spanprism.api.storage import connect as db
from spanprism.attribution.evaluation.scoring import Score
from spanprism.attribution.simulator.presets import DEV_PRESETS, PRESETS, preset_config
from spanprism.attribution.simulator.simulate import SimulationConfig
from spanprism.attribution.store.records import list_regressions
from spanprism.attribution.vocabulary import LABELS
from spanprism.ingest.pipeline import ingest_paths

#: The demo workload: six services over three days, replayed from the bundled Mooncake and LLMPerf traces.
DEMO_CONFIG = SimulationConfig(seed=2026, days=3.0, series=6, rate_min=0.08, rate_max=0.3)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism simulate --out DIR --seed N``: OTLP exports with injected causes, labels kept apart."""
    conventions = tuple(args.conventions.split(",")) if args.conventions else RICH_CONVENTIONS
    unknown = set(conventions) - set(ALL_CONVENTIONS)
    if unknown:
        console.print(f"[red]error:[/red] unknown conventions {sorted(unknown)}; known: {', '.join(ALL_CONVENTIONS)}")
        return 2
    config = SimulationConfig(seed=args.seed, days=args.days, series=args.series, rate_min=args.rate_min,
                              rate_max=args.rate_max)  # fmt: skip
    if args.preset:  # a named users' workload: its own size, rates, habits and (unless given) conventions
        if args.preset not in DEV_PRESETS:
            console.print(f"[red]error:[/red] unknown preset {args.preset!r}; known: {', '.join(DEV_PRESETS)}")
            return 2
        config = preset_config(args.preset, args.seed)
        conventions = conventions if args.conventions else PRESETS[args.preset].conventions
    with console.status(f"simulating {config.series} series × {config.days:g} days"):
        meta = write_simulation(Path(args.out), config, conventions)
    out.print(f"wrote {meta['calls']:,} calls of {meta['series']} series to {args.out} (labels in labels.jsonl)")
    return 0


def print_score(score: Score) -> None:
    """Detection and labelling numbers plus the confusion matrix."""
    d = score.as_dict()
    out.print(
        f"detection recall {d['detection_recall']:.2f} ({score.detected}/{score.injected}); "
        f"for p95 moves ≥ 15 %: {d['detection_recall_p95_moved_15pct']:.2f}; false alarms {score.false_alarms} "
        f"({d['false_alarms_per_series_week']:.2f} per series-week)"
    )
    out.print(f"macro-F1 (4 core labels) {d['macro_f1_core']:.2f}; label accuracy on detected "
              f"{d['label_accuracy_on_detected']:.2f}; reason accuracy {d['reason_accuracy']:.2f}")  # fmt: skip
    per = Table("label", "precision", "recall", "F1", "support", title="per class (detected episodes)")
    for label, m in d["per_class"].items():
        per.add_row(label, f"{m['precision']:.2f}", f"{m['recall']:.2f}", f"{m['f1']:.2f}", str(m["support"]))
    out.print(per)
    columns = [*LABELS, "missed"]
    matrix = Table("truth \\ predicted", *columns, title="confusion matrix")
    for truth in [*LABELS, "false_alarm"]:
        row = d["confusion"].get(truth, {})
        matrix.add_row(truth, *[str(row.get(c, 0)) for c in columns])
    out.print(matrix)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism evaluate DIR``: ingest → attribute a simulated folder into a fresh DB and score it."""
    folder = Path(args.dir)
    if not (folder / "labels.jsonl").exists() or not (folder / "config.json").exists():
        console.print(f"[red]error:[/red] {folder} lacks labels.jsonl or config.json (see `spanprism simulate`)")
        return 1
    db_path = Path(args.eval_db) if args.eval_db else folder / "evaluate.duckdb"
    started = time.perf_counter()
    with console.status("ingesting, detecting and attributing"):
        result, info = evaluate_folder(
            folder, db_path, workers=settings.ingest_workers,
            attribute_fn=partial(attribute, classifier=settings.classifier),
        )  # fmt: skip
    if args.json:
        print(json.dumps({**result.as_dict(), "pairs": result.pairs, **info}, indent=2, default=str))
        return 0
    print_score(result)
    out.print(f"({info['ingest']['calls_stored']:,} calls, {info['regressions']} regressions, "
              f"{time.perf_counter() - started:.0f} s)")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism demo``: sample workload → ingest → attribute → regression report, on the default DB."""
    folder = Path(args.data)
    if not (folder / "config.json").exists():
        with console.status("writing the demo span exports (replayed from the bundled Mooncake/LLMPerf traces)"):
            write_simulation(folder, DEMO_CONFIG)
    con = db.open_db(settings.db)
    try:
        with console.status("ingesting the demo exports"):
            ingested = ingest_paths(con, sorted(folder.glob("spans-*.jsonl*")), workers=settings.ingest_workers)
        with console.status("detecting and attributing regressions"):
            attribute(con, since=None, until=None, classifier=settings.classifier)
        records = list_regressions(con)
    finally:
        con.close()
    out.print(f"ingested {ingested.spans_seen:,} spans from {folder}/ into {settings.db} "
              f"({ingested.calls_stored:,} new LLM calls)")  # fmt: skip
    print_report(records, title=f"{len(records)} regressions, newest first")
    _print_truth(folder)
    out.print("next: `spanprism explain <id>` for the evidence and exemplar traces of one regression")
    if records:
        _print_page_hint(settings, records[0]["id"])
    return 0


def _print_page_hint(settings: Settings, regression_id: str) -> None:
    """Where the newest regression's web page will be, and the command that serves it (open reads: a local demo)."""
    base = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    db_flag = "" if str(settings.db) == "spanprism.duckdb" else f" --db {settings.db}"
    out.print(f"see it in a browser: SPANPRISM_READ_OPEN=true .venv/bin/spanprism{db_flag} serve", soft_wrap=True)
    out.print(f"  then open {base}/regressions/{regression_id}", soft_wrap=True, highlight=False)


def _print_truth(folder: Path) -> None:
    """What was injected (the demo knows the truth; real data does not)."""
    labels = [json.loads(line) for line in (folder / "labels.jsonl").read_text().splitlines() if line.strip()]
    table = Table("service", "start (UTC)", "injected cause", "reason", title="what the demo injected (ground truth)")
    for lab in sorted(labels, key=lambda x: x["start"], reverse=True):
        if lab["label"] != "none":
            start = lab["start"][:16].replace("T", " ")
            table.add_row(lab["series"]["service"], start, lab["label"], lab["reason"] or "-")
    out.print(table)


def register(sub: argparse._SubParsersAction, add: Any) -> None:
    """Add these commands to the main parser (``add`` is ``spanprism.api.cli._add``)."""
    p = add(sub, "simulate", cmd_simulate, "Write simulated OTLP exports with injected, labelled regressions.",
            "spanprism simulate --out sim/ --seed 7 --days 4 --series 8")  # fmt: skip
    p.add_argument("--out", required=True, help="folder for spans-*.jsonl.gz, labels.jsonl and config.json")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--days", type=float, default=4.0, help="days of traffic (default 4)")
    p.add_argument("--series", type=int, default=8, help="number of series (default 8)")
    p.add_argument("--rate-min", type=float, default=0.05, help="lowest series rate, calls/s (default 0.05)")
    p.add_argument("--rate-max", type=float, default=0.4, help="highest series rate, calls/s (default 0.4)")
    p.add_argument("--conventions", help=f"comma-separated conventions (default {','.join(RICH_CONVENTIONS)})")
    p.add_argument("--preset", help=f"a users' workload preset ({', '.join(DEV_PRESETS)}); replaces --days, --series "
                   "and the rates")  # fmt: skip

    p = add(sub, "evaluate", cmd_evaluate, "Score detection and attribution on a simulated folder.",
            "spanprism evaluate sim/")  # fmt: skip
    p.add_argument("dir", help="a folder written by `spanprism simulate`")
    p.add_argument("--eval-db", help="DuckDB file to build (default DIR/evaluate.duckdb; replaced)")
    p.add_argument("--json", action="store_true", help="print all numbers and matched pairs as JSON")

    p = add(sub, "demo", cmd_demo, "Ingest a sample workload, attribute it and print the regression report.",
            "spanprism demo")  # fmt: skip
    p.add_argument("--data", default="spanprism-demo", help="where the demo exports live (default ./spanprism-demo)")
