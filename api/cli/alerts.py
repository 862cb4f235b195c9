"""``spanprism alerts list|test|outbox|deliver``: alert destinations and rules, the outbox, delivery for cron users.

Every command first applies the ``[alerts]`` section of ``$SPANPRISM_CONFIG`` (config-as-code), like ``serve`` does.
Secrets are never printed (masked).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from spanprism.api.alerts.config import ConfigError
from spanprism.api.cli.backend import Backend
from spanprism.api.cli.remote import open_backend
from spanprism.api.settings import Settings


def _print_list(dests: list[dict[str, Any]], rules: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"destinations": dests, "rules": rules}, default=str, indent=2))
        return
    print(f"destinations ({len(dests)}):")
    for d in dests:
        print(f"  {d['id']}  {d['name']}  {d['kind']}  origin={d['origin']}  secret={d['secret']}  "
              f"options={d['options']}")  # fmt: skip
    print(f"rules ({len(rules)}):")
    for r in rules:
        state = "enabled" if r["enabled"] else "disabled"
        print(f"  {r['id']}  {r['name']}  -> {r['destination_id']}  series={r['series']}  labels={r['labels']}  "
              f"min_change_pct={r['min_change_pct']}  min_confidence={r['min_confidence']}  {state}")  # fmt: skip


def _print_outbox(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, default=str, indent=2))
        return
    for r in rows:
        error = f"  error={r['last_error']}" if r["last_error"] else ""
        print(f"{r['id']}  {r['event']:<7}  {r['status']:<7}  attempts={r['attempts']}  regression={r['regression_id']}"
              f"  -> {r['destination'] or r['destination_id']} ({r['kind']}){error}")  # fmt: skip
    print(f"{len(rows)} deliveries")


def _run(backend: Backend, args: argparse.Namespace) -> int:
    """One action on the backend, printed; the exit code."""
    if args.action == "list":
        _print_list(*backend.alert_config(), args.json)
    elif args.action == "outbox":
        _print_outbox(backend.outbox(status=args.status, limit=args.limit), args.json)
    elif args.action == "deliver":
        done = backend.deliver_alerts()
        if done is None:
            print(f"the server at {backend.location} enqueues and delivers alerts itself (every alert_poll_s); "
                  "nothing to do")  # fmt: skip
        else:
            print(f"queued {done[0]}; " + ", ".join(f"{k} {v}" for k, v in done[1].items()))
    else:
        result = backend.test_destination(args.dest)
        if result is None:
            print(f"error: no destination {args.dest}")
            return 1
        print("sent" if result["ok"] else f"failed: {result['error']}")
        return 0 if result["ok"] else 1
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch ``spanprism alerts ACTION`` (through the server when ``url`` is set or ``serve`` holds the file)."""
    if args.action == "test" and not args.dest:
        print("error: alerts test needs a destination id or name")
        return 2
    with open_backend(settings) as backend:
        try:
            return _run(backend, args)
        except ConfigError as exc:  # the local file's [alerts] config-as-code section is invalid
            print(f"error: {exc}")
            return 1


def register(sub: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``alerts`` to the CLI."""
    p = add(sub, "alerts", cmd_alerts, "Alert destinations, rules and deliveries (list, test, outbox, deliver).",
            "spanprism alerts deliver   # enqueue new/resolved regressions and send what is due (cron)")  # fmt: skip
    p.add_argument("action", choices=["list", "test", "outbox", "deliver"],
                   help="list: destinations and rules; test DEST: send a sample regression; outbox: deliveries; "
                        "deliver: enqueue and deliver once")  # fmt: skip
    p.add_argument("dest", nargs="?", help="destination id or name (for test)")
    p.add_argument("--status", choices=["pending", "sent", "failed", "expired"], help="outbox: only this status")
    p.add_argument("--limit", type=int, default=50, help="outbox: rows to show (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
