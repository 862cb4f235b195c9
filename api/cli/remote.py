"""Where the CLI sends its work when the DuckDB file is not its to open: ``SPANPRISM_URL`` or the local server.

DuckDB allows one writing process; while ``spanprism serve`` holds the file, ``ingest``, ``attribute``, ``jobs`` and
``regressions`` go through its API instead of failing on the lock.
"""

from __future__ import annotations

import duckdb
import httpx

from spanprism.api.settings import Settings
from spanprism.api.storage import connect as db


def local_server(settings: Settings) -> str | None:
    """The URL of a spanprism server answering ``/healthz`` on the configured host and port, if any."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}"
    try:
        httpx.get(f"{url}/healthz", timeout=2.0).raise_for_status()
    except httpx.HTTPError:
        return None
    return url


def client(url: str, api_key: str | None, **kwargs: object) -> httpx.Client:
    """An httpx client for the server's API, with the CLI's key as bearer."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, **kwargs)  # type: ignore[arg-type]


def open_or_server(settings: Settings, url: str | None = None) -> tuple[duckdb.DuckDBPyConnection | None, str | None]:
    """``(connection, None)`` when this process may open the file; ``(None, url)`` when ``url``/``settings.url`` is
    given or a running server holds the file. Raises ``DatabaseLockedError`` when the file is locked and no server
    answers (the lock belongs to something else)."""
    url = url or settings.url
    if url:
        return None, url
    try:
        return db.open_db(settings.db), None
    except db.DatabaseLockedError:
        url = local_server(settings)
        if url is None:
            raise
        return None, url
