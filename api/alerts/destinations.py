"""Alert destinations: validation by kind (see :mod:`.kinds`), secret masking and the ``alert_destinations`` rows.

A destination keeps non-secret ``options`` (JSON) apart from its ``secret`` (JSON: webhook URL, routing key, HMAC
secret). Only :func:`load_destination` ever reads the secret, for delivery; everything shown to a caller goes through
:meth:`Destination.public`, which masks it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from spanprism.api.alerts.kinds import get_kind, kind_names
from spanprism.models.state import StateCursor


class DestinationError(ValueError):
    """A destination that cannot be stored as given (unknown kind, missing secret, unknown option)."""


def validate(kind: str, options: dict[str, Any], secret: dict[str, Any]) -> None:
    """Raise :class:`DestinationError` unless ``options``/``secret`` fit ``kind`` (messages never echo secrets)."""
    if kind not in kind_names():
        raise DestinationError(f"unknown kind {kind!r}; choose from {', '.join(kind_names())}")
    entry = get_kind(kind)
    needed, allowed = entry.secret_keys, entry.option_keys
    missing = [k for k in needed if not isinstance(secret.get(k), str) or not secret[k]]
    if missing:
        raise DestinationError(f"{kind} destination needs secret field(s) {missing}")
    extra = sorted(set(secret) - set(needed))
    if extra:
        raise DestinationError(f"{kind} destination has unknown secret field(s) {extra}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DestinationError(f"{kind} destination has unknown option(s) {unknown}; allowed: {list(allowed)}")
    for key in entry.url_keys:
        for where, values in (("secret field", secret), ("option", options)):
            if key in values and urlsplit(str(values[key])).scheme not in ("http", "https"):
                raise DestinationError(f"{where} {key!r} must be an http(s) URL")
    if entry.check is not None:
        try:
            entry.check(options, secret)
        except ValueError as exc:
            raise DestinationError(str(exc)) from exc


def mask(value: str) -> str:
    """``https://hooks.slack.com/services/T0/B0/xyz`` → ``https://hooks.slack.com/…/****``; other values → ``****``."""
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname:
        return f"{parts.scheme}://{parts.hostname}/…/****"
    return "****"


@dataclass
class Destination:
    """One ``alert_destinations`` row (``secret`` filled only when loaded for delivery)."""

    id: str
    name: str
    kind: str
    options: dict[str, Any]
    origin: str = "api"
    created_at: datetime | None = None
    updated_at: datetime | None = None
    secret: dict[str, str] = field(default_factory=dict, repr=False)
    masked: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """What the API and CLI show: options, and the secret masked (never the value)."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "options": self.options, "secret": self.masked,
                "has_secret": bool(self.masked), "origin": self.origin,
                "created_at": self.created_at, "updated_at": self.updated_at}  # fmt: skip


def config_id(name: str) -> str:
    """A stable id for a config-as-code row, so outbox rows keep pointing at it across restarts."""
    return "cfg_" + hashlib.sha256(name.encode()).hexdigest()[:12]


_COLUMNS = "id, name, kind, options, secret, origin, created_at, updated_at"


def _row(row: tuple, *, with_secret: bool) -> Destination:
    secret = orjson.loads(row[4])
    return Destination(id=row[0], name=row[1], kind=row[2], options=orjson.loads(row[3]), origin=row[5],
                       created_at=row[6], updated_at=row[7], secret=secret if with_secret else {},
                       masked={k: mask(str(v)) for k, v in secret.items()})  # fmt: skip


def list_destinations(cur: StateCursor) -> list[Destination]:
    """Every destination, secrets left out."""
    rows = cur.execute(f"SELECT {_COLUMNS} FROM alert_destinations ORDER BY created_at, name").fetchall()
    return [_row(r, with_secret=False) for r in rows]


def get_destination(cur: StateCursor, ref: str) -> Destination | None:
    """A destination by id or name, secret left out."""
    row = cur.execute(f"SELECT {_COLUMNS} FROM alert_destinations WHERE id = ? OR name = ? ORDER BY id = ? DESC",
                      [ref, ref, ref]).fetchone()  # fmt: skip
    return None if row is None else _row(row, with_secret=False)


def load_destination(cur: StateCursor, dest_id: str) -> Destination | None:
    """A destination with its secret, for delivery only."""
    row = cur.execute(f"SELECT {_COLUMNS} FROM alert_destinations WHERE id = ?", [dest_id]).fetchone()
    return None if row is None else _row(row, with_secret=True)


def insert_destination(cur: StateCursor, *, name: str, kind: str, options: dict[str, Any],
                       secret: dict[str, str], origin: str = "api", dest_id: str | None = None) -> str:  # fmt: skip
    """Validate and store a destination; returns its id."""
    validate(kind, options, secret)
    dest_id = dest_id or "dst_" + secrets.token_hex(6)
    now = datetime.now(UTC)
    cur.execute(f"INSERT INTO alert_destinations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [dest_id, name, kind, orjson.dumps(options).decode(), orjson.dumps(secret).decode(), origin,
                 now, now])  # fmt: skip
    return dest_id


def update_destination(cur: StateCursor, dest_id: str, *, name: str | None = None,
                       options: dict[str, Any] | None = None,
                       secret: dict[str, str] | None = None) -> bool:  # fmt: skip
    """Change name/options/secret (a secret is replaced only when given); False when there is no such row."""
    current = load_destination(cur, dest_id)
    if current is None:
        return False
    new_options = current.options if options is None else options
    new_secret = current.secret if secret is None else secret
    validate(current.kind, new_options, new_secret)
    cur.execute("UPDATE alert_destinations SET name = ?, options = ?, secret = ?, updated_at = ? WHERE id = ?",
                [name or current.name, orjson.dumps(new_options).decode(), orjson.dumps(new_secret).decode(),
                 datetime.now(UTC), dest_id])  # fmt: skip
    return True


def delete_destination(cur: StateCursor, dest_id: str) -> bool:
    """Delete a destination; False when there is no such row."""
    return cur.execute("DELETE FROM alert_destinations WHERE id = ? RETURNING id", [dest_id]).fetchone() is not None
