"""CLI commands that find and explain regressions: ``attribute``, ``regressions``, ``explain``, ``label``."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
from rich.table import Table

from spanprism.api.cli import jobs as cli_jobs
from spanprism.api.cli.data import console, out
from spanprism.api.cli.remote import open_backend
from spanprism.api.settings import Settings
from spanprism.api.storage import connect as db
from spanprism.api.storage.state import PostgresState
from spanprism.api.wording import explain_text
from spanprism.attribution.classifier.model import DEFAULT_ARTIFACT
from spanprism.attribution.evaluation.training import DEFAULT_TRAIN, evaluate_holdout, train
from spanprism.attribution.passes import runs
from spanprism.attribution.passes.label_pass import feedback_examples
from spanprism.attribution.vocabulary import ALL_REASONS, LABELS, check_reason


def parse_time(text: str | None) -> datetime | None:
    """ISO-8601 (a bare date or naive time means UTC)."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def attribute(
    con: duckdb.DuckDBPyConnection, *, since: datetime | None, until: datetime | None, classifier: Path | None = None
) -> dict[str, Any]:
    """Detection then attribution (now :func:`attribution.passes.runs.attribute`, shared with the scheduler)."""
    return runs.attribute(con, since=since, until=until, classifier=classifier)


def cmd_attribute(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism attribute [--since --until]``: one ``manual`` pass, here or on the server that owns the file."""
    return cli_jobs.run_and_report(settings, "manual", since=args.since, until=args.until, as_json=args.json)


def _top_contributions(contrib: dict[str, float], n: int = 2) -> str:
    ranked = sorted(((k, v) for k, v in contrib.items() if k != "residual"), key=lambda kv: -abs(kv[1]))[:n]
    parts = [f"{k} {v:+.0f}" for k, v in ranked if abs(v) >= 0.5]
    if abs(contrib.get("residual", 0.0)) >= 0.5:
        parts.append(f"residual {contrib['residual']:+.0f}")
    return ", ".join(parts) or "-"


def print_report(records: list[dict[str, Any]], title: str = "regressions") -> None:
    """The human regression report: one row per regression, its cause and the milliseconds behind it."""
    table = Table(title=title)
    for col in ("id", "series", "start (UTC)", "status", "metric", "baseline → observed", "label", "reason", "conf",
                "top contributions (ms)"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for r in records:
        s = r["series"]
        table.add_row(
            r["id"][:12], f"{s['service']} / {s['provider']} / {s['model']}", (r["start"] or "")[:16].replace("T", " "),
            r["status"], r["metric"], f"{r['baseline']:.0f} → {r['observed']:.0f} ({r['change_pct']:+.0f}%)",
            r["label"], r["reason"] or "-", f"{r['confidence']:.2f}", _top_contributions(r["contributions_ms"]),
        )  # fmt: skip
    out.print(table)


def cmd_regressions(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism regressions [--json] [--url URL]``: the DESIGN.md records, newest first (local file or a server)."""
    with open_backend(settings, args.url) as backend:
        records = backend.regressions(label=args.label, status=args.status, since=args.since, until=args.until,
                                      withheld=args.withheld)  # fmt: skip
    if args.json:
        sys.stdout.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif records:
        print_report(records)
    else:
        out.print("no regressions (run `spanprism attribute` after ingesting)")
    return 0


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism explain ID``: one regression with its evidence, contributions and exemplar traces."""
    with open_backend(settings) as backend:
        record = backend.regression(args.id)
    if record is None:
        console.print(f"[red]error:[/red] no single regression matches id {args.id!r}")
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    out.print(explain_text(record, debug=args.debug), markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_label(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism label ID LABEL [--reason R]``: record the true cause from a post-mortem."""
    try:
        check_reason(args.label, args.reason)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    with open_backend(settings) as backend:
        regression_id = backend.label(args.id, label=args.label, reason=args.reason, note=args.note)
    if regression_id is None:
        console.print(f"[red]error:[/red] no single regression matches id {args.id!r}")
        return 1
    out.print(f"recorded {args.label}{'/' + args.reason if args.reason else ''} for {regression_id}")
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism train [--with-feedback]``: rebuild the classifier deterministically from simulation seeds."""
    extra: list[tuple[dict[str, float], str, str | None]] = []
    if args.with_feedback:
        if settings.state_url:  # post-mortem labels are results: where the state lives
            state = PostgresState(settings.state_url)
            try:
                with state.read() as cur:
                    extra = feedback_examples(cur)
            finally:
                state.close()
        else:
            con = db.open_db(settings.db)
            try:
                extra = feedback_examples(con)
            finally:
                con.close()
        out.print(f"folding in {len(extra)} post-mortem labels")
    target = Path(args.out) if args.out else (settings.classifier or DEFAULT_ARTIFACT)
    with console.status("simulating training workloads and fitting the classifier"):
        att = train(DEFAULT_TRAIN, extra_examples=extra, workers=settings.ingest_workers)
        if args.holdout:
            att.metadata["holdout"] = evaluate_holdout(att, workers=settings.ingest_workers)
    att.save(target)
    hint = "" if target == DEFAULT_ARTIFACT else f" (use it with SPANPRISM_CLASSIFIER={target})"
    out.print(f"wrote {target}{hint}")
    return 0


def register(sub: argparse._SubParsersAction, add: Any) -> None:
    """Add these commands to the main parser (``add`` is ``spanprism.api.cli._add``)."""
    p = add(sub, "attribute", cmd_attribute, "Detect regressions and attribute their cause (all data by default).",
            "spanprism attribute --since 2026-11-01")  # fmt: skip
    p.add_argument("--since", type=parse_time, help="ISO-8601 start (default: everything)")
    p.add_argument("--until", type=parse_time, help="ISO-8601 end (default: now)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")

    p = add(sub, "regressions", cmd_regressions, "List regressions (DESIGN.md records).",
            "spanprism regressions --json --label cache_eviction")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print a JSON list of regression records")
    p.add_argument("--label", choices=LABELS, help="only this label")
    p.add_argument("--status", choices=("open", "resolved", "accepted"), help="only open, resolved or accepted")
    p.add_argument("--since", type=parse_time, help="only regressions overlapping this start")
    p.add_argument("--until", type=parse_time, help="only regressions starting before this")
    p.add_argument(
        "--withheld",
        action="store_true",
        help="also the regressions the label pass withheld (own-size drift, weak unexplained shifts)",
    )
    p.add_argument("--url", help="read from a running server instead of the file (default: $SPANPRISM_URL)")

    p = add(sub, "explain", cmd_explain, "Explain one regression: contributions, evidence, exemplar traces.",
            "spanprism explain 3f2a9c")  # fmt: skip
    p.add_argument("id", help="regression id (a unique prefix is enough)")
    p.add_argument("--json", action="store_true", help="print the full record as JSON")
    p.add_argument("--debug", action="store_true", help="also show the classifier's internal features")

    p = add(sub, "label", cmd_label, "Record the true cause of a regression (post-mortem feedback for training).",
            "spanprism label 3f2a9c cache_eviction --reason prompt_changed")  # fmt: skip
    p.add_argument("id", help="regression id (a unique prefix is enough)")
    p.add_argument("label", choices=LABELS, help="the true label")
    p.add_argument("--reason", choices=ALL_REASONS, help="the true reason sub-label (one of that label's)")
    p.add_argument("--note", help="free text, e.g. a post-mortem link")

    p = add(sub, "train", cmd_train, "Rebuild the attribution classifier from simulation seeds (deterministic).",
            "spanprism train --with-feedback --out my-classifier.json")  # fmt: skip
    p.add_argument("--with-feedback", action="store_true", help="fold in labels recorded with `spanprism label`")
    p.add_argument("--out", help="artifact path (default: $SPANPRISM_CLASSIFIER or the shipped artifact)")
    p.add_argument("--holdout", action="store_true", help="also score the held-out simulation sets (slower)")
