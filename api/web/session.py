"""Who is looking at a page: a signed, expiring session cookie that a login with an API key sets once.

The cookie never holds the key. It holds the key's SHA-256 (what ``api_keys`` stores), an expiry and a nonce,
signed with HMAC-SHA256 under ``session_secret`` (a random per-process secret when unset: sessions then end with
the process). Every request re-checks the hash against ``api_keys``, so revoking a key ends its sessions at once.
The cookie is HttpOnly, ``SameSite=Strict`` and ``Secure`` when the public URL is https. Forms that change
something carry a CSRF token derived from the session's nonce (HMAC again), checked on POST.

Logging in is protected the same way before any session exists: ``GET /login`` sets a short-lived signed pre-session
cookie (:data:`LOGIN_COOKIE`, a nonce and an expiry, HttpOnly, ``SameSite=Strict``, path ``/login``) and the form
carries the HMAC of that nonce. A login POST without both, or with a token of another nonce, is refused: another
site cannot log a victim's browser into an attacker's key (login CSRF), since it can neither read nor set the
cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from spanprism.api.deps import ANONYMOUS_READER, principal_cache
from spanprism.api.security import SCOPES, Principal, hash_key
from spanprism.api.settings import Settings

COOKIE = "spanprism_session"
#: The pre-session cookie of the login form, and how long a login form stays valid.
LOGIN_COOKIE, LOGIN_PATH, LOGIN_FORM_S = "spanprism_login", "/login", 2 * 3600


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


def _seal(request: Request, body: dict[str, object]) -> str:
    """``payload.signature``: the JSON body in URL-safe base64, then its HMAC."""
    payload = base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")
    return f"{payload}.{_sign(_secret(request), payload.encode())}"


def _unseal(request: Request, value: str) -> dict[str, Any] | None:
    """The body of a sealed value, or None when it is empty, forged or not a JSON object."""
    payload, _, signature = value.partition(".")
    if not payload or not hmac.compare_digest(signature, _sign(_secret(request), payload.encode())):
        return None
    try:
        body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def encode(request: Request, key: str, lifetime_s: int) -> str:
    """A cookie value for a key that just logged in."""
    return _seal(request, {"h": hash_key(key), "e": int(time.time()) + lifetime_s, "n": secrets.token_urlsafe(16)})


def decode(request: Request) -> Session | None:
    """The session of this request's cookie, or None when absent, forged or expired."""
    body = _unseal(request, request.cookies.get(COOKIE, ""))
    try:
        session = Session(str(body["h"]), int(body["e"]), str(body["n"])) if body else None
    except (ValueError, KeyError, TypeError):
        return None
    return session if session is not None and session.expires > time.time() else None


def _login_nonce(request: Request, *, min_left_s: float = 0.0) -> str | None:
    """The nonce of this request's pre-session cookie when it is signed, a login cookie (not a session cookie put
    in its place) and valid for ``min_left_s`` more seconds; None otherwise."""
    body = _unseal(request, request.cookies.get(LOGIN_COOKIE, ""))
    try:
        fresh = body is not None and body.get("k") == "login" and int(body["e"]) > time.time() + min_left_s
    except (ValueError, KeyError, TypeError):
        return None
    return str(body["n"]) if fresh and body is not None else None


def _login_token(request: Request, nonce: str) -> str:
    return _sign(_secret(request), f"login-csrf:{nonce}".encode())


def login_form(request: Request) -> tuple[str | None, str]:
    """For a login page being served: a new pre-session cookie value (None: keep the current one) and the form's
    CSRF token. A cookie with more than half its life left is kept, so two open login tabs both work."""
    nonce = _login_nonce(request, min_left_s=LOGIN_FORM_S / 2)
    if nonce is not None:
        return None, _login_token(request, nonce)
    nonce = secrets.token_urlsafe(16)
    return _seal(request, {"k": "login", "n": nonce, "e": int(time.time()) + LOGIN_FORM_S}), _login_token(
        request, nonce
    )


def login_csrf_ok(request: Request, token: str) -> bool:
    """Whether a login POST carries the token of the pre-session cookie it came with."""
    nonce = _login_nonce(request)
    return nonce is not None and bool(token) and hmac.compare_digest(token, _login_token(request, nonce))


def csrf_token(request: Request, session: Session | None) -> str:
    """The token admin forms carry; empty without a session (such a page shows no admin form)."""
    return "" if session is None else _sign(_secret(request), f"csrf:{session.nonce}".encode())


def csrf_ok(request: Request, session: Session | None, token: str) -> bool:
    """Whether a form POST carries the token of the session it came with."""
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
