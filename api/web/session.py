"""Who is looking at a page: a signed, expiring session cookie that a login with an API key sets once.

The cookie never holds the key. It holds the key's SHA-256 (what ``api_keys`` stores), an expiry and a nonce,
signed with HMAC-SHA256 under ``session_secret`` (a random per-process secret when unset: sessions then end with
the process). Every request re-checks the hash against ``api_keys``, so revoking a key ends its sessions at once.
The cookie is HttpOnly, ``SameSite=Strict`` and ``Secure`` when the public URL is https. Forms that change
something carry a CSRF token derived from the session's nonce (HMAC again), checked on POST.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson
from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from spanprism.api.deps import ANONYMOUS_READER, principal_cache
from spanprism.api.security import SCOPES, Principal, hash_key
from spanprism.api.settings import Settings

COOKIE = "spanprism_session"


@dataclass(frozen=True)
class Session:
    """A verified cookie: whose key (by hash), until when, and the nonce CSRF tokens are tied to."""

    key_hash: str
    expires: int
    nonce: str


def _secret(request: Request) -> bytes:
    state = request.app.state
    if getattr(state, "session_secret", None) is None:
        configured: str | None = request.app.state.settings.session_secret
        state.session_secret = configured.encode() if configured else secrets.token_bytes(32)
    return state.session_secret


def _sign(secret: bytes, payload: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret, payload, hashlib.sha256).digest()).decode().rstrip("=")


def encode(request: Request, key: str, lifetime_s: int) -> str:
    """A cookie value for a key that just logged in."""
    body = {"h": hash_key(key), "e": int(time.time()) + lifetime_s, "n": secrets.token_urlsafe(16)}
    payload = base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")
    return f"{payload}.{_sign(_secret(request), payload.encode())}"


def decode(request: Request) -> Session | None:
    """The session of this request's cookie, or None when absent, forged or expired."""
    value = request.cookies.get(COOKIE, "")
    payload, _, signature = value.partition(".")
    if not payload or not hmac.compare_digest(signature, _sign(_secret(request), payload.encode())):
        return None
    try:
        body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        session = Session(str(body["h"]), int(body["e"]), str(body["n"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires > time.time() else None


def csrf_token(request: Request, session: Session | None) -> str:
    """The token admin forms carry; empty without a session (such a page shows no admin form)."""
    return "" if session is None else _sign(_secret(request), f"csrf:{session.nonce}".encode())


def csrf_ok(request: Request, session: Session | None, token: str) -> bool:
    return session is not None and bool(token) and hmac.compare_digest(token, csrf_token(request, session))


async def principal_of(request: Request, session: Session | None) -> Principal | None:
    """The session's principal as the database says now (None when its key was revoked or never existed)."""
    if session is None:
        return None
    settings: Settings = request.app.state.settings
    if settings.admin_key and hmac.compare_digest(session.key_hash, hash_key(settings.admin_key)):
        return Principal("env-admin", frozenset(SCOPES))
    cache = principal_cache(request)
    hit = cache.entries.get(session.key_hash)
    if hit and hit[1] > time.monotonic():
        return hit[0]

    def lookup() -> Principal | None:
        with request.app.state.db.state.read() as cur:
            row = cur.execute(
                "SELECT id, scopes FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", [session.key_hash]
            ).fetchone()
        return Principal(row[0], frozenset(row[1].split(","))) if row else None

    principal = await run_in_threadpool(lookup)
    if principal is not None:
        cache.entries[session.key_hash] = (principal, time.monotonic() + cache.ttl_s)
    return principal


async def viewer(request: Request) -> tuple[Principal | None, Session | None]:
    """Who may see pages: the session's principal, else the anonymous reader when reads are open, else None."""
    session = decode(request)
    principal = await principal_of(request, session)
    if principal is None and request.app.state.settings.read_open:
        return ANONYMOUS_READER, None
    return principal, session if principal is not None else None
