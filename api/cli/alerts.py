"""``spanprism alerts list|test|outbox|deliver``: alert destinations and rules, the outbox, delivery for cron users.

Every command first applies the ``[alerts]`` section of ``$SPANPRISM_CONFIG`` (config-as-code), like ``serve`` does.
Secrets are never printed (masked).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import httpx

from spanprism.api.alerts.config import ConfigError, sync_from_env
from spanprism.api.alerts.destinations import list_destinations
from spanprism.api.alerts.outbox import list_outbox
from spanprism.api.alerts.rules import list_rules
from spanprism.api.alerts.worker import Deliverer, enqueue_pass
from spanprism.api.cli.remote import client, open_or_server
from spanprism.api.metrics import Metrics
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database


def _list(db: Database, as_json: bool) -> int:
    with db.read() as cur:
        dests = [d.public() for d in list_destinations(cur)]
        rules = [r.public() for r in list_rules(cur)]
    return _print_list(dests, rules, as_json)


def _print_list(dests: list[dict[str, Any]], rules: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"destinations": dests, "rules": rules}, default=str, indent=2))
        return 0
    print(f"destinations ({len(dests)}):")
    for d in dests:
        print(f"  {d['id']}  {d['name']}  {d['kind']}  origin={d['origin']}  secret={d['secret']}  "
              f"options={d['options']}")  # fmt: skip
    print(f"rules ({len(rules)}):")
    for r in rules:
        state = "enabled" if r["enabled"] else "disabled"
        print(f"  {r['id']}  {r['name']}  -> {r['destination_id']}  series={r['series']}  labels={r['labels']}  "
              f"min_change_pct={r['min_change_pct']}  min_confidence={r['min_confidence']}  {state}")  # fmt: skip
    return 0


def _outbox(db: Database, status: str | None, limit: int, as_json: bool) -> int:
    with db.read() as cur:
        rows = list_outbox(cur, status=status, limit=limit)
    return _print_outbox(rows, as_json)


def _print_outbox(rows: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    for r in rows:
        error = f"  error={r['last_error']}" if r["last_error"] else ""
        print(f"{r['id']}  {r['event']:<7}  {r['status']:<7}  attempts={r['attempts']}  regression={r['regression_id']}"
              f"  -> {r['destination'] or r['destination_id']} ({r['kind']}){error}")  # fmt: skip
    print(f"{len(rows)} deliveries")
    return 0


def _deliver(db: Database, settings: Settings) -> int:
    queued = enqueue_pass(db)
    deliverer = Deliverer(db, settings, Metrics())
    try:
        counts = deliverer.deliver_due()
    finally:
        deliverer.close()
    print(f"queued {queued}; " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _remote(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """The same actions through a running server's API (it owns the file and delivers alerts itself)."""
    with client(url, settings.api_key, timeout=60) as http:

        def get(path: str, **params: Any) -> Any:
            reply = http.get(f"/api/v1/alerts{path}", params={k: v for k, v in params.items() if v is not None})
            reply.raise_for_status()
            return reply.json()["data"]

        if args.action == "list":
            return _print_list(get("/destinations"), get("/rules"), args.json)
        if args.action == "outbox":
            return _print_outbox(get("/outbox", status=args.status, limit=args.limit), args.json)
        if args.action == "deliver":
            print(f"the server at {url} enqueues and delivers alerts itself (every alert_poll_s); nothing to do")
            return 0
        reply = http.post(f"/api/v1/alerts/destinations/{args.dest}/test")
        if reply.status_code == 404:
            print(f"error: no destination {args.dest}")
            return 1
        reply.raise_for_status()
        result = reply.json()
    print("sent" if result["ok"] else f"failed: {result['error']}")
    return 0 if result["ok"] else 1


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch ``spanprism alerts ACTION`` (through the server when ``url`` is set or ``serve`` holds the file)."""
    from spanprism.api.routers.alerts import send_sample

    if args.action == "test" and not args.dest:
        print("error: alerts test needs a destination id or name")
        return 2
    con, url = open_or_server(settings)
    if con is None:
        try:
            return _remote(args, settings, url)
        except httpx.HTTPError as exc:
            print(f"error: {url}: {exc}")
            return 1
    con.close()  # migrated and free: the service-state Database takes the file from here
    db = Database(settings.db)
    try:
        try:
            sync_from_env(db)
        except ConfigError as exc:
            print(f"error: {exc}")
            return 1
        if args.action == "list":
            return _list(db, args.json)
        if args.action == "outbox":
            return _outbox(db, args.status, args.limit, args.json)
        if args.action == "deliver":
            return _deliver(db, settings)
        try:
            result = send_sample(db, settings, args.dest)
        except LookupError as exc:
            print(f"error: {exc}")
            return 1
        print("sent" if result["ok"] else f"failed: {result['error']}")
        return 0 if result["ok"] else 1
    finally:
        db.close()


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
