"""Shared fixtures: a real spanprism server (uvicorn on 127.0.0.1, random port) over a fresh DuckDB file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from spanprism.api.app import create_app
from spanprism.api.server import running
from spanprism.api.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789"


@dataclass
class Live:
    """A running server: its base URL, settings, and a client authenticated as admin."""

    url: str
    settings: Settings
    app: object
    client: httpx.Client

    def as_key(self, key: str | None) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextmanager
def live_server(tmp_path: Path, services: list | None = None, **overrides: object) -> Iterator[Live]:
    """Start the real app on a free loopback port; ``services=None`` keeps the default background services."""
    settings = Settings(db=tmp_path / "server.duckdb", admin_key=ADMIN_KEY, **overrides)
    app = create_app(settings, services=services)
    with running(app) as url, httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"},
                                           timeout=30) as client:  # fmt: skip
        yield Live(url, settings, app, client)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Live]:
    """A live server with the default services."""
    with live_server(tmp_path) as live:
        yield live


@pytest.fixture
def make_server(tmp_path: Path) -> Callable[..., object]:
    """Build a live server with custom settings: ``with make_server(read_open=True) as live: ...``."""
    return lambda **overrides: live_server(tmp_path, **overrides)
