"""CLI commands that move data in and look at it: ``ingest``, ``calls``, ``summary``, ``db``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from spanprism.api.cli.backend import Backend
from spanprism.api.cli.remote import open_backend
from spanprism.api.settings import Settings
from spanprism.api.storage import connect as db
from spanprism.ingest.pipeline import IngestSummary, expand_sources

console = Console(stderr=True)
# Piped output is not truncated to 80 columns: tables are read by people and by grep alike.
out = Console(width=None if sys.stdout.isatty() else 220)

#: Inputs at least this large get a progress bar.
PROGRESS_MIN_BYTES = 8 << 20


def _ingest(backend: Backend, paths: list[str], workers: int) -> IngestSummary:
    """Ingest on ``backend``, with a progress bar on a terminal when the inputs are large."""
    inputs, _ = expand_sources(paths)
    total = sum(os.path.getsize(p) for p in inputs if p != "-")
    if total < PROGRESS_MIN_BYTES or not console.is_terminal:
        return backend.ingest(paths, workers=workers)
    columns = (TextColumn("ingest"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("ingest", total=total)
        return backend.ingest(paths, workers=workers, progress=lambda n: bar.advance(task, n))


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism ingest PATH...``: store LLM calls, quarantine bad records, print a summary."""
    with open_backend(settings) as backend:
        if backend.held_by_server:
            console.print(f"{settings.db} is held by a running server; sending the files to {backend.location}")
        summary = _ingest(backend, args.paths, args.workers or settings.ingest_workers)
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
