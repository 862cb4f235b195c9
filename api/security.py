"""API keys: random bearer tokens stored as SHA-256 hashes, each with scopes ``ingest``, ``read``, ``admin``.

Keys are 32 random bytes, so a fast hash is safe (there is nothing to brute-force); the plain key is shown once
at creation. ``admin`` implies every scope. ``SPANPRISM_ADMIN_KEY`` is accepted as an admin key without a row.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from spanprism.models.state import StateCursor

SCOPES = ("ingest", "read", "admin")
PREFIX = "spk_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key id (or ``env-admin`` / ``anonymous``) and its scopes."""

    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str | list[str]) -> frozenset[str]:
    """``"read,ingest"`` or a list → a validated scope set (ValueError names the bad scope)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = frozenset(s.strip() for s in items if s.strip())
    bad = sorted(scopes - set(SCOPES))
    if bad or not scopes:
        raise ValueError(f"unknown or missing scope(s) {bad}; choose from {', '.join(SCOPES)}")
    return scopes


def create_key(cur: StateCursor, *, name: str, scopes: frozenset[str]) -> tuple[str, str]:
    """Store a new key (hashed) and return ``(key_id, plain_key)``; the plain key is not recoverable later."""
    key_id = secrets.token_hex(4)
    plain = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    cur.execute(
        "INSERT INTO api_keys (id, name, scopes, key_hash, created_at) VALUES (?, ?, ?, ?, ?)",
        [key_id, name, ",".join(sorted(scopes)), hash_key(plain), datetime.now(UTC)],
    )
    return key_id, plain


def revoke_key(cur: StateCursor, key_id: str) -> bool:
    """Revoke a key; False when there is no such active key."""
    row = cur.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING id",
        [datetime.now(UTC), key_id],
    ).fetchone()
    return row is not None


def list_keys(cur: StateCursor) -> list[dict[str, object]]:
    """Every key without its hash."""
    rows = cur.execute(
        "SELECT id, name, scopes, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at"
    ).fetchall()
    return [
        {"id": r[0], "name": r[1], "scopes": r[2].split(","), "created_at": r[3], "last_used_at": r[4],
         "revoked_at": r[5]}
        for r in rows
    ]  # fmt: skip


def authenticate(cur: StateCursor, key: str, admin_key: str | None) -> Principal | None:
    """The principal for a presented key, or None when it is unknown or revoked."""
    if admin_key and hmac.compare_digest(key.encode(), admin_key.encode()):
        return Principal("env-admin", frozenset(SCOPES))
    if not key.startswith(PREFIX):
        return None
    row = cur.execute(
        "SELECT id, scopes FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", [hash_key(key)]
    ).fetchone()
    return Principal(row[0], frozenset(row[1].split(","))) if row else None
