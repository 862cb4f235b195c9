"""CLI commands of the service: ``serve`` and ``keys``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from spanprism.api.cli.data import out
from spanprism.api.cli.remote import client, open_or_server
from spanprism.api.security import create_key, list_keys, parse_scopes, revoke_key
from spanprism.api.settings import Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism serve [--host --port]``: the OTLP/HTTP receiver and the REST API on one port."""
    from spanprism.api.app import create_app  # the web stack is imported only by the commands that need it
    from spanprism.api.server import serve_forever

    settings = settings.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v})
    serve_forever(create_app(settings), settings.host, settings.port, log_level=args.log_level)
    return 0


def _keys_remote(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """The same through a running server (``SPANPRISM_API_KEY`` must be an admin key)."""
    with client(url, settings.api_key, timeout=30) as http:
        if args.action == "create":
            reply = http.post("/api/v1/keys", json={"name": args.name or "cli", "scopes": sorted(args.scopes)})
        elif args.action == "list":
            reply = http.get("/api/v1/keys")
        else:
            reply = http.delete(f"/api/v1/keys/{args.id}")
    if reply.status_code >= 400:
        print(f"error: {url} answered {reply.status_code}: {reply.text[:300]}")
        return 1
    if args.action == "create":
        body = reply.json()
        out.print(f"key {body['id']} ({', '.join(body['scopes'])}); store it now, it is not shown again:")
        print(body["key"])
    elif args.action == "list":
        for k in reply.json()["data"]:
            state = "revoked" if k["revoked_at"] else "active"
            out.print(f"{k['id']}  {k['name']}  {','.join(k['scopes'])}  {state}  created {k['created_at'][:10]}")
    else:
        out.print(f"revoked {args.id}")
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """``spanprism keys create|list|revoke``: API keys (stored hashed; a new key is printed once)."""
    if args.action == "create":
        try:
            args.scopes = parse_scopes(",".join(args.scope or []))
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
    if args.action == "revoke" and not args.id:
        print("error: keys revoke needs --id")
        return 2
    con, url = open_or_server(settings)
    if con is None:
        return _keys_remote(args, settings, url)
    try:
        if args.action == "create":
            scopes = args.scopes
            con.execute("BEGIN TRANSACTION")
            key_id, plain = create_key(con, name=args.name or "cli", scopes=scopes)
            con.execute("COMMIT")
            out.print(f"key {key_id} ({', '.join(sorted(scopes))}); store it now, it is not shown again:")
            print(plain)
        elif args.action == "list":
            for k in list_keys(con):
                state = "revoked" if k["revoked_at"] else "active"
                out.print(
                    f"{k['id']}  {k['name']}  {','.join(k['scopes'])}  {state}  created {k['created_at']:%Y-%m-%d}"
                )
        else:
            if not revoke_key(con, args.id):
                print(f"error: no active key {args.id}")
                return 1
            out.print(f"revoked {args.id}")
    finally:
        con.close()
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
