"""CLI command ``spanprism worker``: an attribution worker taking hash shards of the series through leases."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime

import orjson

from spanprism.api.cli.data import out
from spanprism.api.settings import Settings


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism worker [--once [--nightly]]``: pass due shards (all of them once with ``--once``, else every
    ``worker_every_s``, and each nightly slot's re-detection), any number of these processes on any hosts sharing
    the state database and ClickHouse. Every round that passed a shard is a ``job_runs`` row (``spanprism jobs``)."""
    from spanprism.api.services.shard_worker import ShardWorker, nightly_slot
    from spanprism.api.storage.database import Database
    from spanprism.attribution.passes import shards

    if not settings.state_url or not settings.clickhouse_url:
        print("error: spanprism worker needs SPANPRISM_STATE_URL (PostgreSQL) and SPANPRISM_CLICKHOUSE_URL: workers"
              " share the calls and the results, each keeps only a rollup cache in its own --db file")  # fmt: skip
        return 2
    db = Database(settings.db, state_url=settings.state_url)
    try:
        if args.status:
            with db.state.read() as cur:
                rows = shards.leases(cur)
            for row in rows:
                out.print(" ".join(f"{k}={v.isoformat() if isinstance(v, datetime) else v}" for k, v in row.items()))
            return 0
        worker = ShardWorker(db, settings, owner=args.owner)
        if args.once:
            if args.nightly:  # the shards not yet re-detected for the current nightly slot
                summary = worker.run_round(nightly_slot=nightly_slot(settings))
            else:
                summary = worker.run_round(due_before=datetime.now(UTC))
            if args.json:
                print(orjson.dumps(asdict(summary)).decode())
            else:
                out.print(f"worker {worker.owner} ({summary.kind}): {len(summary.shards)} shards,"
                          f" {summary.series} series, {summary.regressions} regressions, {summary.attributed}"
                          f" attributed in {summary.seconds} s (run {summary.run_id})"
                          + (f"; failed {sorted(summary.failed)}" if summary.failed else ""))  # fmt: skip
            return 1 if summary.failed else 0
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        worker.run_forever(stop, every_s=settings.worker_every_s, nightly=not args.no_nightly)
        return 0
    finally:
        db.close()


def register(sub: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``worker`` to the CLI."""
    p = add(sub, "worker", cmd_worker,
            "Attribution worker: takes hash shards of the series through leases in the state database and runs their"
            " passes (needs SPANPRISM_STATE_URL and SPANPRISM_CLICKHOUSE_URL; run any number).",
            "SPANPRISM_SCHEDULER_ENABLED=false spanprism worker  # state + ClickHouse URLs set")  # fmt: skip
    p.add_argument("--once", action="store_true", help="pass every shard due now once, then exit")
    p.add_argument(
        "--nightly",
        action="store_true",
        help="with --once: re-detect the shards not yet passed for the current nightly slot (nightly_cron)",
    )
    p.add_argument(
        "--no-nightly",
        action="store_true",
        help="looping: leave the nightly passes to other workers (default: each slot's, once per shard)",
    )
    p.add_argument("--owner", help="this worker's name in the lease table (default: host:pid)")
    p.add_argument("--status", action="store_true", help="print every shard's lease row and exit")
    p.add_argument("--json", action="store_true", help="print the --once summary as JSON")
