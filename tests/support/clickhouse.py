"""ClickHouse for tests: chDB (ClickHouse's engine in-process, 26.x) behind a tiny HTTP endpoint on 127.0.0.1.

No ClickHouse server binary installs here (Debian's is 18.16, without ``Map`` or ``DateTime64``), but chDB runs the
same engine and accepts the Collector exporter's DDL unchanged. The product's real client, ``clickhouse-connect``,
talks HTTP to this endpoint exactly as it would to a server: each request's query (URL ``query=`` and/or the POST
body) runs in one chDB session and the answer comes back in the FORMAT the query asks for.

An ``INSERT … FORMAT X`` carries its rows in the request body; chDB's Python API takes no input stream, so the body
is written to a temporary file and inserted with ``INSERT … SELECT * FROM file(path, X)``. That works for Arrow, which
is what the product sends (Native-format inserts do not survive the round trip: the product is configured for
Arrow). Requests run one at a time (a lock): one chDB session is one engine, and tests only need correctness.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(?P<target>.+?)\s+FORMAT\s+(?P<fmt>\w+)\s*$", re.IGNORECASE | re.DOTALL)
_FORMAT = re.compile(r"\bFORMAT\s+(?P<fmt>\w+)\s*;?\s*$", re.IGNORECASE)
# URL parameters that are transport, not ClickHouse settings (they must not become SETTINGS clauses).
_TRANSPORT = {"query", "database", "session_id", "session_timeout", "session_check", "default_format", "compress",
              "decompress", "query_id", "user", "password", "quota_key", "wait_end_of_query", "buffer_size",
              "enable_http_compression", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
              "cancel_http_readonly_queries_on_client_close"}  # fmt: skip
#: Set in CI: a missing chDB fails the ``clickhouse`` tests instead of skipping them.
REQUIRE_ENV = "SPANPRISM_REQUIRE_CLICKHOUSE"
_CONTENT_TYPES = {"Arrow": "application/octet-stream", "ArrowStream": "application/octet-stream"}


@dataclass
class ClickHouseServer:
    """A running endpoint: ``url`` for ``SPANPRISM_CLICKHOUSE_URL``, ``requests`` counts queries served."""

    url: str
    port: int
    requests: int = 0
    databases: int = 0

    def new_database(self) -> str:
        """Create a fresh database and return the URL that selects it (``http://127.0.0.1:PORT/NAME``)."""
        import urllib.request

        self.databases += 1
        name = f"t{self.databases}"
        request = urllib.request.Request(self.url, data=f"CREATE DATABASE {name}".encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
        return f"{self.url}/{name}"


class _Engine:
    """One chDB session (one data directory) shared by all requests, one query at a time."""

    def __init__(self, path: str) -> None:
        from chdb import session

        self.session = session.Session(path)
        self.lock = threading.Lock()
        self.scratch = tempfile.mkdtemp(prefix="chdb-http-")

    def run(self, query: str, body: bytes, database: str | None, default_format: str,
            settings: dict[str, str]) -> tuple[bytes, str]:  # fmt: skip
        """Execute one request's query with its settings; returns (result bytes, format)."""
        with self.lock:
            if database:
                self.session.query(f"USE {database}")
            # As a server applies URL settings before parsing (max_query_size must be known by the parser). They
            # stay set in the session afterwards; requests that care send their own.
            for name, value in settings.items():
                self.session.query(f"SET {name} = {value if re.fullmatch(r'-?[0-9.]+', value) else repr(value)}")
            insert = _INSERT.match(query)
            if insert:
                path = os.path.join(self.scratch, "insert.bin")
                with open(path, "wb") as f:
                    f.write(body)
                target, fmt = insert.group("target"), insert.group("fmt")
                self.session.query(f"INSERT INTO {target} SELECT * FROM file('{path}', '{fmt}')")
                return b"", "TabSeparated"
            fmt_match = _FORMAT.search(query)
            fmt = fmt_match.group("fmt") if fmt_match else default_format
            text = query[: fmt_match.start()] if fmt_match else query
            result = self.session.query(text.strip().rstrip(";"), fmt)
            return result.bytes(), fmt


def _settings(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k not in _TRANSPORT and not k.startswith("param_")}


def _handler(engine: _Engine, server: ClickHouseServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            query = params.get("query", "")
            if not _INSERT.match(query) and body:  # a query in the body (possibly after a URL prefix)
                query = f"{query}\n{body.decode()}" if query else body.decode()
                body = b""
            server.requests += 1
            try:
                if url.path.rstrip("/") == "/ping":
                    out, fmt = b"Ok.\n", "TabSeparated"
                else:
                    out, fmt = engine.run(
                        query, body, params.get("database"), params.get("default_format", "TSV"), _settings(params)
                    )
            except Exception as exc:  # the engine's error, as ClickHouse sends it: status 500 and the message
                message = f"Code: 1000. DB::Exception: {exc}".encode()
                self.send_response(500)
                self.send_header("X-ClickHouse-Exception-Code", "1000")
                self.send_header("Content-Type", "text/plain; charset=UTF-8")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)
                return
            self.send_response(200)
            self.send_header("Content-Type", _CONTENT_TYPES.get(fmt, "text/plain; charset=UTF-8"))
            self.send_header("X-ClickHouse-Format", fmt)
            self.send_header("X-ClickHouse-Timezone", "UTC")
            self.send_header("X-ClickHouse-Server-Display-Name", "chdb")
            self.send_header("X-ClickHouse-Summary", '{"read_rows":"0","written_rows":"0"}')
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = _answer
        do_POST = _answer

    return Handler


@contextmanager
def serve_clickhouse(data_dir: str) -> Iterator[ClickHouseServer]:
    """Serve a chDB session over HTTP on a free 127.0.0.1 port until the block ends."""
    engine = _Engine(data_dir)
    info = ClickHouseServer(url="", port=0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(engine, info))
    httpd.daemon_threads = True
    info.port = httpd.server_address[1]
    info.url = f"http://127.0.0.1:{info.port}"
    thread = threading.Thread(target=httpd.serve_forever, name="chdb-http", daemon=True)
    thread.start()
    try:
        yield info
    finally:
        httpd.shutdown()
        httpd.server_close()
        engine.session.close()


def main() -> None:
    """``python tests/support/clickhouse.py DATA_DIR``: serve until killed; prints the URL on stdout (benchmarks run
    the engine in a process of its own, as a real server would be)."""
    import sys
    import time

    with serve_clickhouse(sys.argv[1]) as server:
        print(server.url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
