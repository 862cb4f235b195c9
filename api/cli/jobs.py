"""CLI for attribution passes: ``jobs`` (list runs), ``jobs run incremental|nightly``, and the engine of ``attribute``.

A pass runs in this process on the DuckDB file, recorded in ``job_runs`` with trigger ``cli``. When a server owns
the file (``settings.url`` is set, or the file is locked and a server answers at ``http://{host}:{port}``), the
pass is queued on it with ``POST /api/v1/jobs/attribute`` and polled until it finishes, so the CLI and the
scheduler never run two passes at once (:mod:`spanprism.api.cli.remote` decides which).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from rich.table import Table

from spanprism.api.cli.data import console, out
from spanprism.api.cli.remote import open_backend
from spanprism.api.settings import Settings
from spanprism.attribution.passes import runs


def run_and_report(settings: Settings, kind: str, *, since: datetime | None, until: datetime | None,
                   as_json: bool) -> int:  # fmt: skip
    """Run one pass where it belongs (here, or queued on the server that owns the file) and print its outcome;
    exit code 0 when it succeeded or had nothing to do."""
    with open_backend(settings) as backend:
        if backend.held_by_server:
            console.print(f"the database is held by the server at {backend.location}; queueing the pass there")
        with console.status(f"running a {kind} attribution pass"):
            record = backend.run_pass(kind, since=since, until=until)
    counts = record["counts"]
    if as_json:
        print(json.dumps({**counts, "run": {k: v for k, v in record.items() if k != "counts"}}, indent=2))
    elif record["status"] == "succeeded":
        out.print(f"{counts['series']} series, {counts['regressions_open']} open and "
                  f"{counts['regressions_resolved']} resolved regressions, {counts['attributed']} (re)attributed "
                  f"(run {record['id']})")  # fmt: skip
        for reg_id, why in counts.get("failed", {}).items():
            console.print(f"[yellow]could not attribute {reg_id}:[/yellow] {why}")
    else:
        out.print(f"run {record['id']} {record['status']}: {record['error'] or counts.get('reason', '')}")
    return 0 if record["status"] in ("succeeded", "skipped") else 1


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism jobs [--kind --status --limit --json]``: recorded attribution runs, newest first."""
    with open_backend(settings) as backend:
        page, total = backend.list_runs(kind=args.kind, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps({"data": page, "count": total}, indent=2))
        return 0
    table = Table(title=f"attribution runs ({len(page)} of {total})")
    for col in ("id", "kind", "trigger", "status", "queued (UTC)", "seconds", "window (UTC)", "result"):
        table.add_column(col, overflow="fold")
    for r in page:
        table.add_row(r["id"], r["kind"], r["trigger"], r["status"], _short(r["queued_at"]), _seconds(r),
                      f"{_short(r['window_start'])} → {_short(r['window_end'])}", _result(r))  # fmt: skip
    out.print(table)
    return 0


def _short(iso: str | None) -> str:
    return (iso or "-")[:16].replace("T", " ")


def _seconds(r: dict[str, Any]) -> str:
    if not (r["started_at"] and r["finished_at"]):
        return "-"
    delta = datetime.fromisoformat(r["finished_at"]) - datetime.fromisoformat(r["started_at"])
    return f"{delta.total_seconds():.1f}"


def _result(r: dict[str, Any]) -> str:
    c = r["counts"]
    if r["status"] == "succeeded":
        return f"{c.get('regressions_open', 0)} open, {c.get('regressions_resolved', 0)} resolved"
    return r["error"] or c.get("reason") or ""


def cmd_jobs_run(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism jobs run incremental|nightly``: one scheduled-kind pass now."""
    return run_and_report(settings, args.kind, since=None, until=None, as_json=args.json)


def register(sub: argparse._SubParsersAction, add: Any) -> None:
    """Add ``jobs`` and ``jobs run`` to the main parser (``add`` is ``spanprism.api.cli._add``)."""
    p = add(sub, "jobs", cmd_jobs, "List attribution runs (scheduled, API and CLI), newest first.",
            "spanprism jobs --status failed")  # fmt: skip
    p.add_argument("--kind", choices=runs.KINDS, help="only this kind")
    p.add_argument("--status", choices=runs.STATUSES, help="only this status")
    p.add_argument("--limit", type=int, default=20, help="runs to show (default 20)")
    p.add_argument("--json", action="store_true", help='print {"data": [...], "count": n}')
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    r = add(actions, "run", cmd_jobs_run, "Run one incremental or nightly attribution pass now.",
            "spanprism jobs run nightly")  # fmt: skip
    r.add_argument("kind", choices=("incremental", "nightly"), help="which pass")
    r.add_argument("--json", action="store_true", help="print the run counts and record as JSON")
