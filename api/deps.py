"""Dependencies declared once as ``Annotated`` aliases: the database, settings, metrics and the caller's scope."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool

from spanprism.api.metrics import Metrics
from spanprism.api.security import Principal, authenticate, hash_key
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database

ANONYMOUS_READER = Principal("anonymous", frozenset({"read"}))


# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, one hop per
# dependency per request, and under 50 concurrent clients those hops (and the GIL hand-offs between 40 pool threads)
# were most of a cached panel's latency.


async def get_db(request: Request) -> Database:
    return request.app.state.db


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def presented_key(request: Request, settings: Settings) -> str | None:
    """The key from ``Authorization: Bearer …`` or the configured OTLP header (a Collector's ``headers:``)."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get(settings.otlp_key_header) or None


class PrincipalCache:
    """Recently authenticated keys (by hash), so a dashboard's many requests do not each query ``api_keys``.

    Entries live ``ttl_s`` seconds; revoking a key through the API drops the whole cache at once (of this
    process: with the state in PostgreSQL the entries live :data:`SHARED_STATE_TTL_S`, so a revocation on another
    replica takes effect here within it).
    """

    def __init__(self, ttl_s: float = 60.0) -> None:
        self.ttl_s = ttl_s
        self.entries: dict[str, tuple[Principal, float]] = {}

    def get(self, key: str) -> Principal | None:
        hit = self.entries.get(hash_key(key))
        return hit[0] if hit and hit[1] > time.monotonic() else None

    def put(self, key: str, principal: Principal) -> None:
        if len(self.entries) > 10_000:  # bounded: unknown keys are never cached, but many valid ones could be
            self.entries.clear()
        self.entries[hash_key(key)] = (principal, time.monotonic() + self.ttl_s)

    def clear(self) -> None:
        self.entries.clear()


#: Cache lifetime when replicas share the state: a key revoked on another replica stops working within it.
SHARED_STATE_TTL_S = 2.0


def principal_cache(request: Request) -> PrincipalCache:
    state = request.app.state
    if getattr(state, "principals", None) is None:
        shared = getattr(getattr(state, "db", None), "state", None) is not None and state.db.state.shared
        state.principals = PrincipalCache(SHARED_STATE_TTL_S) if shared else PrincipalCache()
    return state.principals


async def _authenticate(request: Request, key: str, settings: Settings) -> Principal | None:
    cache = principal_cache(request)
    principal = cache.get(key)
    if principal is None:

        def lookup() -> Principal | None:
            with request.app.state.db.state.read() as cur:
                return authenticate(cur, key, settings.admin_key)

        principal = await run_in_threadpool(lookup)
        if principal is not None:
            cache.put(key, principal)
    return principal


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that lets the request through only with a key holding ``scope`` (401 none, 403 wrong scope)."""

    async def check(request: Request) -> Principal:
        settings: Settings = request.app.state.settings
        key = presented_key(request, settings)
        if key is None:
            if scope == "read" and settings.read_open:
                return ANONYMOUS_READER
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "an API key is required (Authorization: Bearer KEY)",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        principal = await _authenticate(request, key, settings)
        if principal is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        if not principal.allows(scope):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this key lacks the '{scope}' scope")
        return principal

    return check


ReadAuth = Annotated[Principal, Depends(require("read"))]
IngestAuth = Annotated[Principal, Depends(require("ingest"))]
AdminAuth = Annotated[Principal, Depends(require("admin"))]
