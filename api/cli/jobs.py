"""CLI for attribution passes: ``jobs`` (list runs), ``jobs run incremental|nightly``, and the engine of ``attribute``.

A pass runs in this process on the DuckDB file, recorded in ``job_runs`` with trigger ``cli``. When a server owns
the file (``settings.url`` is set, or the file is locked and a server answers at ``http://{host}:{port}``), the
pass is queued on it with ``POST /api/v1/jobs/attribute`` and polled until it finishes, so the CLI and the
scheduler never run two passes at once.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

import httpx
from rich.table import Table

from spanprism.api.cli.data import console, out
from spanprism.api.cli.remote import client, local_server, open_or_server
from spanprism.api.settings import Settings
from spanprism.api.storage import connect as db
from spanprism.attribution.passes import runs

POLL_S = 0.5
_OPEN = ("queued", "running")


class RemoteError(RuntimeError):
    """The server refused or failed a request (the message says what to fix)."""


def _client(url: str, api_key: str | None) -> httpx.Client:
    return client(url, api_key, timeout=30)


def _checked(resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code in (401, 403):
        raise RemoteError(f"{resp.request.url} answered {resp.status_code}: set SPANPRISM_API_KEY to an admin key")
    if resp.status_code >= 400:
        raise RemoteError(f"{resp.request.url} answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def run_remote(url: str, api_key: str | None, kind: str, *, since: datetime | None = None,
               until: datetime | None = None, poll_s: float = POLL_S) -> dict[str, Any]:  # fmt: skip
    """Queue a pass on the server at ``url`` and poll it until its status is final; returns the run record."""
    body: dict[str, Any] = {"kind": kind}
    body.update({k: v.isoformat() for k, v in (("since", since), ("until", until)) if v is not None})
    with _client(url, api_key) as client:
        record = _checked(client.post("/api/v1/jobs/attribute", json=body))
        while record["status"] in _OPEN:
            time.sleep(poll_s)
            record = _checked(client.get(f"/api/v1/jobs/{record['id']}"))
    return record


def run_local(settings: Settings, kind: str, *, since: datetime | None = None,
              until: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """Run a pass in this process (raises ``DatabaseLockedError`` when a server owns the file)."""
    con = db.open_db(settings.db)
    try:
        runs.mark_interrupted(con)  # this process owns the file: any run still "running" is dead
        record = runs.new_run(kind, "cli", since=since, until=until)
        final = runs.execute(con, record, classifier=settings.classifier, lookback_days=settings.nightly_lookback_days)
    finally:
        con.close()
    return runs.public(final)


def run_pass(settings: Settings, kind: str, *, since: datetime | None = None,
             until: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """One pass where it belongs: on ``settings.url``, else here, else on the server that holds the file."""
    if settings.url:
        return run_remote(settings.url, settings.api_key, kind, since=since, until=until)
    try:
        return run_local(settings, kind, since=since, until=until)
    except db.DatabaseLockedError:
        url = local_server(settings)
        if url is None:
            raise
        console.print(f"the database is held by the server at {url}; queueing the pass there")
        return run_remote(url, settings.api_key, kind, since=since, until=until)


def run_and_report(settings: Settings, kind: str, *, since: datetime | None, until: datetime | None,
                   as_json: bool) -> int:  # fmt: skip
    """Run one pass, print its outcome; exit code 0 when it succeeded or had nothing to do."""
    try:
        with console.status(f"running a {kind} attribution pass"):
            record = run_pass(settings, kind, since=since, until=until)
    except (RemoteError, httpx.HTTPError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
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


def _list(settings: Settings, args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    query = {k: v for k, v in (("kind", args.kind), ("status", args.status)) if v}
    con, url = open_or_server(settings)
    if con is not None:
        try:
            page, total = runs.list_runs(con, **query, limit=args.limit)
        finally:
            con.close()
        return [runs.public(r) for r in page], total
    with _client(url, settings.api_key) as client:
        body = _checked(client.get("/api/v1/jobs", params={**query, "limit": args.limit}))
    return body["data"], body["count"]


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism jobs [--kind --status --limit --json]``: recorded attribution runs, newest first."""
    try:
        page, total = _list(settings, args)
    except (RemoteError, httpx.HTTPError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
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
