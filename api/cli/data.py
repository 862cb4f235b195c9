"""CLI commands that move data in and look at it: ``ingest``, ``calls``, ``summary``, ``db``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import nullcontext

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from spanprism.api.cli.remote import client, open_or_server
from spanprism.api.settings import Settings
from spanprism.api.storage import connect as db
from spanprism.ingest.pipeline import IngestSummary, expand_sources, ingest_paths

console = Console(stderr=True)
# Piped output is not truncated to 80 columns: tables are read by people and by grep alike.
out = Console(width=None if sys.stdout.isatty() else 220)

#: Inputs at least this large get a progress bar.
PROGRESS_MIN_BYTES = 8 << 20


def _ingest_with_progress(con, args: argparse.Namespace, settings: Settings) -> IngestSummary:
    inputs, _ = expand_sources(args.paths)
    total = sum(os.path.getsize(p) for p in inputs if p != "-")
    workers = args.workers or settings.ingest_workers
    kwargs = {"workers": workers, "tenant_attribute": settings.tenant_attribute, "chunk_bytes": settings.chunk_bytes,
              "limits": settings.ingest_limits()}  # fmt: skip
    if total < PROGRESS_MIN_BYTES or not console.is_terminal:
        return ingest_paths(con, args.paths, **kwargs)
    columns = (TextColumn("ingest"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("ingest", total=total)
        return ingest_paths(con, args.paths, progress=lambda n: bar.advance(task, n), **kwargs)


def _stream(item: str) -> Iterator[bytes]:
    """A file (or stdin) in 1 MiB pieces: uploads are streamed, never read whole."""
    with nullcontext(sys.stdin.buffer) if item == "-" else open(item, "rb") as f:
        while piece := f.read(1 << 20):
            yield piece


def _ingest_remote(args: argparse.Namespace, settings: Settings, url: str) -> IngestSummary:
    """Send each input to ``POST /api/v1/ingest`` of a running server and add up its summaries."""
    inputs, errors = expand_sources(args.paths)
    summary = IngestSummary(errors=errors)
    with client(url, settings.api_key, timeout=httpx.Timeout(30.0, read=None)) as http:
        for item in inputs:
            name = "stdin" if item == "-" else item
            try:
                reply = http.post("/api/v1/ingest", params={"filename": name}, content=_stream(item))
            except (OSError, httpx.HTTPError) as exc:
                summary.errors.append(f"{name}: {exc}")
                continue
            if reply.status_code != 200:
                summary.errors.append(f"{name}: the server answered {reply.status_code}: {reply.text[:300]}")
                continue
            got = reply.json()
            for key in ("spans_seen", "calls_stored", "duplicates", "non_llm_skipped", "quarantined"):
                setattr(summary, key, getattr(summary, key) + got[key])
            summary.conventions.update(got["conventions"])
            summary.batches.extend([f"{name} (server)"] * got["batches"])  # the API returns the count only
            summary.errors.extend(got["errors"])
    return summary


def _run_ingest(args: argparse.Namespace, settings: Settings) -> IngestSummary:
    """Local when the DB file is free; through the server when ``url`` is set or ``serve`` holds the file."""
    con, url = open_or_server(settings)
    if con is None:
        if not settings.url:
            console.print(f"{settings.db} is held by a running server; sending the files to {url}")
        return _ingest_remote(args, settings, url)
    try:
        return _ingest_with_progress(con, args, settings)
    finally:
        con.close()


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism ingest PATH...``: store LLM calls, quarantine bad records, print a summary."""
    summary = _run_ingest(args, settings)
    for err in summary.errors:
        console.print(f"[red]error:[/red] {err}")
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        _print_summary(summary)
    if summary.errors or (args.strict and summary.quarantined):
        return 1
    return 0


def _print_summary(summary: IngestSummary) -> None:
    table = Table(title="ingest summary", show_header=False)
    for label, value in (
        ("spans seen", summary.spans_seen),
        ("LLM calls stored", summary.calls_stored),
        ("duplicates (already stored)", summary.duplicates),
        ("non-LLM spans skipped", summary.non_llm_skipped),
        ("quarantined", summary.quarantined),
        ("batches", len(summary.batches)),
    ):
        table.add_row(label, f"{value:,}")
    for convention, n in sorted(summary.conventions.items()):
        table.add_row(f"  convention {convention}", f"{n:,}")
    out.print(table)
    if summary.quarantined:
        out.print(
            "quarantined records keep their raw bytes and reason: SELECT source, location, reason FROM quarantine"
        )


def cmd_calls(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism calls``: a quick look at stored rows."""
    where, params = ("WHERE service = ?", [args.service]) if args.service else ("", [])
    sql = (
        "SELECT start_time, service, provider, request_model, region, status, streaming, input_tokens, "
        "cache_read_tokens, output_tokens, round(ttft_ms, 1) AS ttft_ms, round(itl_ms, 2) AS itl_ms, "
        "round(duration_ms, 1) AS duration_ms, source_convention "
        f"FROM llm_calls {where} ORDER BY start_time DESC LIMIT ?"
    )
    _print_query(settings, "latest LLM calls", sql, [*params, max(1, min(args.limit, 1000))])
    return 0


SUMMARY_SQL = """
SELECT service, provider, request_model, operation, count(*) AS calls,
       round(avg(CASE WHEN status = 'error' THEN 1 ELSE 0 END) * 100, 1) AS error_pct,
       round(quantile_cont(duration_ms, 0.95), 0) AS e2e_p95_ms,
       round(quantile_cont(ttft_ms, 0.5), 0) AS ttft_p50_ms, round(quantile_cont(ttft_ms, 0.95), 0) AS ttft_p95_ms,
       round(quantile_cont(itl_ms, 0.5), 1) AS itl_p50_ms,
       round(median(input_tokens), 0) AS input_p50,
       round(sum(cache_read_tokens) / nullif(sum(input_tokens) FILTER (WHERE cache_read_tokens IS NOT NULL), 0), 3)
         AS cache_read_ratio
FROM llm_calls GROUP BY ALL ORDER BY calls DESC
"""


def cmd_summary(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism summary``: per-series TTFT, ITL and cache figures."""
    _print_query(settings, "per-series summary", SUMMARY_SQL, [])
    return 0


def _print_query(settings: Settings, title: str, sql: str, params: list) -> None:
    con = db.open_db(settings.db)
    try:
        cur = con.execute(sql, params)
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    print_rows(title, names, rows)


def print_rows(title: str, names: list[str], rows: list[tuple]) -> None:
    """Print query rows as a rich table (NULL shown as '-')."""
    table = Table(*names, title=title)
    for row in rows:
        table.add_row(*["-" if v is None else str(v) for v in row])
    out.print(table)


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism db upgrade|current``."""
    if args.action == "upgrade":
        rev = db.upgrade(settings.db)
        print(f"{settings.db}: at revision {rev} (head {db.head_revision()})")
        return 0
    engine = db.engine_for(settings.db)
    try:
        print(db.current_revision(engine) or "empty (no migrations applied)")
    finally:
        engine.dispose()
    return 0
