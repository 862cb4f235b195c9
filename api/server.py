"""Running the app under uvicorn: in the foreground (``spanprism serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from spanprism.api import logs


def serve_forever(app: FastAPI, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop it cleanly through the lifespan)."""
    logs.configure(log_level.upper())
    uvicorn.run(app, host=host, port=port, log_config=None, log_level=log_level, access_log=False)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (for tests and benchmarks on loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, *, alive: Callable[[], bool], timeout_s: float = 60.0, poll_s: float = 0.1) -> bool:
    """Poll ``url``/healthz until it answers 200 (True), or until ``alive()`` turns False or the time is up (False).

    For servers started as another process (``spanprism serve`` in tests and benchmarks): ``alive`` is usually
    ``lambda: proc.poll() is None``, so a server that died at start is noticed at once rather than at the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    return False


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` in a background thread; yields its base URL and shuts it down (lifespan included) on exit."""
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, log_level="warning",
                                           access_log=False, lifespan="on"))  # fmt: skip
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
