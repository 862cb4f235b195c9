"""CLI commands of the service: ``serve`` and ``keys``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from spanprism.api.cli.data import out
from spanprism.api.cli.remote import open_backend
from spanprism.api.security import parse_scopes
from spanprism.api.settings import Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism serve [--host --port]``: the OTLP/HTTP receiver and the REST API on one port."""
    from spanprism.api.app import create_app  # the web stack is imported only by the commands that need it
    from spanprism.api.server import serve_forever

    settings = settings.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v})
    serve_forever(create_app(settings), settings.host, settings.port, log_level=args.log_level)
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism keys create|list|revoke``: API keys (stored hashed; a new key is printed once)."""
    if args.action == "create":
        try:
            scopes = parse_scopes(",".join(args.scope or []))
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
    if args.action == "revoke" and not args.id:
        print("error: keys revoke needs --id")
        return 2
    with open_backend(settings) as backend:
        if args.action == "create":
            created = backend.create_key(name=args.name or "cli", scopes=scopes)
            out.print(f"key {created['id']} ({', '.join(created['scopes'])}); store it now, it is not shown again:")
            print(created["key"])
        elif args.action == "list":
            for k in backend.list_keys():
                state = "revoked" if k["revoked_at"] else "active"
                out.print(f"{k['id']}  {k['name']}  {','.join(k['scopes'])}  {state}  created {k['created_at'][:10]}")
        elif backend.revoke_key(args.id):
            out.print(f"revoked {args.id}")
        else:
            print(f"error: no active key {args.id}")
            return 1
    return 0


def register(sub: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``keys`` to the CLI."""
    p = add(sub, "serve", cmd_serve, "Serve the OTLP/HTTP receiver and the REST API (one port; owns the DB file).",
            "SPANPRISM_ADMIN_KEY=change-me spanprism serve --host 0.0.0.0 --port 4318")  # fmt: skip
    p.add_argument("--host", help="listen address (default: $SPANPRISM_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: $SPANPRISM_PORT or 4318)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    p = add(
        sub,
        "keys",
        cmd_keys,
        "Create, list or revoke API keys.",
        "spanprism keys create --scope ingest --name collector",
    )
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("--scope", action="append", help="ingest, read or admin (repeat or comma-separate)")
    p.add_argument("--name", help="a label for the key")
    p.add_argument("--id", help="key id to revoke")
