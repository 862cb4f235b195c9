"""A real HTTP receiver on 127.0.0.1 for alert-delivery tests: records requests, answers from a script."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from spanprism.api.server import free_port


class Receiver:
    """A real HTTP receiver: records every request and answers from a script of statuses (then ``default``)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.default = (200, {})
        self.delay_s = 0.0  # seconds each answer takes (overlaps concurrent deliverers)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ok(self) -> list[dict[str, Any]]:
        """Requests answered 2xx (what was delivered)."""
        with self._lock:
            return [r for r in self.requests if 200 <= r["status"] < 300]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("content-length", 0)))
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            code, headers = self.script.pop(0) if self.script else self.default
            self.requests.append({"path": handler.path, "headers": {k.lower(): v for k, v in handler.headers.items()},
                                  "body": body, "status": code})  # fmt: skip
        handler.send_response(code)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("content-length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
