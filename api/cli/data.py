"""CLI commands that move data in and look at it: ``ingest``, ``calls``, ``summary``, ``db``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial

import duckdb
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from spanprism.api.cli.backend import Backend
from spanprism.api.cli.remote import open_backend
from spanprism.api.settings import Settings
from spanprism.api.storage import connect as db
from spanprism.attribution.store import calls as stored_calls
from spanprism.ingest import otel_traces
from spanprism.ingest.pipeline import IngestSummary, expand_sources
from spanprism.models.clickhouse import bound

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
    limit = max(1, min(args.limit, 1000))
    _print_query(settings, "latest LLM calls", partial(stored_calls.latest_calls, service=args.service, limit=limit))
    return 0


def cmd_source(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism source``: read new spans of the Collector's ``otel_traces`` into ``llm_calls`` (ClickHouse)."""
    store = bound()
    if store is None:
        console.print("[red]error:[/red] `spanprism source` reads ClickHouse: set SPANPRISM_CLICKHOUSE_URL")
        return 2
    try:
        part = otel_traces.Part.parse(args.part or settings.clickhouse_source_part)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    con = db.open_db(settings.db)
    try:
        while True:
            run = otel_traces.follow(con, store, table=settings.clickhouse_source_table,
                                     late_s=settings.clickhouse_source_late_s, slice_s=args.slice_s,
                                     max_slices=args.max_slices, tenant_attribute=settings.tenant_attribute,
                                     limits=settings.ingest_limits(), part=part)  # fmt: skip
            summary = {"slices": run.slices, "spans_read": run.spans_read, "calls_stored": run.calls_stored,
                       "duplicates": run.duplicates, "watermark_ns": run.watermark_ns,
                       "part": f"{part.index}/{part.of}"}  # fmt: skip
            if args.json:
                out.print_json(data=summary)
            else:
                out.print(", ".join(f"{k} {v}" for k, v in summary.items()))
            if not args.every:
                return 0
            time.sleep(args.every)
    finally:
        con.close()


def cmd_summary(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism summary``: per-series TTFT, ITL and cache figures."""
    _print_query(settings, "per-series summary", stored_calls.series_summary)
    return 0


def _print_query(settings: Settings, title: str,
                 query: Callable[[duckdb.DuckDBPyConnection], tuple[list[str], list[tuple]]]) -> None:  # fmt: skip
    con = db.open_db(settings.db)
    try:
        names, rows = query(con)
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
