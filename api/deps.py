"""Dependencies declared once as ``Annotated`` aliases: the database, settings, metrics and the caller's scope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from api.database import Database
from api.metrics import Metrics
from api.security import Principal, authenticate
from api.settings import Settings

ANONYMOUS_READER = Principal("anonymous", frozenset({"read"}))


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
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


def require(scope: str) -> Callable[[Request], Principal]:
    """A dependency that lets the request through only with a key holding ``scope`` (401 none, 403 wrong scope)."""

    def check(request: Request) -> Principal:
        settings: Settings = request.app.state.settings
        key = presented_key(request, settings)
        if key is None:
            if scope == "read" and settings.read_open:
                return ANONYMOUS_READER
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "an API key is required (Authorization: Bearer KEY)",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        with request.app.state.db.read() as cur:
            principal = authenticate(cur, key, settings.admin_key)
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
