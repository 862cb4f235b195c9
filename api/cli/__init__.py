"""The ``spanprism`` command line: one entry point, one sub-command per job.

Exit codes: 0 ok, 1 failure, 2 bad usage. Each sub-command's ``--help`` carries an example.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from spanprism.api.cli import alerts as cli_alerts
from spanprism.api.cli import attribution as cli_attribution
from spanprism.api.cli import data as cli_data
from spanprism.api.cli import jobs as cli_jobs
from spanprism.api.cli import serve as cli_serve
from spanprism.api.cli import sim as cli_sim
from spanprism.api.cli import worker as cli_worker
from spanprism.api.cli.backend import BackendError
from spanprism.api.settings import Settings
from spanprism.api.storage.calls_engine import calls_engine
from spanprism.api.storage.connect import DatabaseLockedError

Handler = Callable[[argparse.Namespace, Settings], int]


def _add(
    sub: argparse._SubParsersAction, name: str, handler: Handler, help_: str, example: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="spanprism", description="Explain LLM latency regressions from OpenTelemetry spans."
    )
    parser.add_argument("--db", help="DuckDB file (default: $SPANPRISM_DB or ./spanprism.duckdb)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "ingest", cli_data.cmd_ingest, "Ingest OTLP span exports (files, folders, globs, - for stdin).",
             "spanprism ingest exports/*.jsonl traces.pb.zst")  # fmt: skip
    p.add_argument("paths", nargs="+", metavar="PATH", help="file, folder, glob or - (stdin)")
    p.add_argument("--strict", action="store_true", help="exit 1 when anything was quarantined")
    p.add_argument("--workers", type=int, help="decode/normalize worker processes (default: $SPANPRISM_INGEST_WORKERS)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = _add(sub, "calls", cli_data.cmd_calls, "Show a few stored LLM calls as a table.", "spanprism calls --limit 20")
    p.add_argument("--limit", type=int, default=10, help="rows to show (default 10)")
    p.add_argument("--service", help="only this service")

    p = _add(sub, "summary", cli_data.cmd_summary, "Per-series TTFT, ITL and cache summary of stored calls.",
             "spanprism summary")  # fmt: skip

    p = _add(sub, "source", cli_data.cmd_source,
             "Follow the Collector's ClickHouse otel_traces table into llm_calls (needs SPANPRISM_CLICKHOUSE_URL).",
             "SPANPRISM_CLICKHOUSE_URL=http://ch:8123/otel spanprism source --every 60")  # fmt: skip
    p.add_argument("--every", type=float, help="seconds between passes (default: one pass, then exit)")
    p.add_argument("--slice-s", type=int, default=300, help="seconds of spans read and stored at a time (default 300)")
    p.add_argument("--max-slices", type=int, help="stop a pass after this many slices (the next pass goes on)")
    p.add_argument("--part", help="I/N: follow the traces whose id hashes to I of N (N followers share the table; "
                   "default: the clickhouse_source_part setting, 0/1 = all)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the pass summary as JSON")

    cli_attribution.register(sub, _add)
    cli_jobs.register(sub, _add)
    cli_sim.register(sub, _add)
    cli_serve.register(sub, _add)
    cli_alerts.register(sub, _add)
    cli_worker.register(sub, _add)

    p = _add(sub, "db", cli_data.cmd_db, "Database maintenance.", "spanprism db upgrade")
    p.add_argument(
        "action", choices=["upgrade", "current"], help="upgrade: migrate to the newest schema; current: print revision"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {"db": args.db} if args.db else {}
    try:
        settings = Settings(**overrides)
        with calls_engine(settings.clickhouse_url):
            return args.handler(args, settings)
    except (DatabaseLockedError, BackendError) as exc:  # the file is not ours, or the server refused or is gone
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
