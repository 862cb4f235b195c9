"""An OTLP/HTTP trace receiver that writes what it receives as a Collector ``format: proto`` file.

``POST /v1/traces`` with ``application/x-protobuf`` (optionally ``Content-Encoding: gzip``) is parsed as an
``ExportTraceServiceRequest`` (so a malformed export fails here, not later in ingest), appended to the capture
file as a 4-byte big-endian length-prefixed record (the file exporter's ``exportMessageAsBuffer`` layout), and
answered with HTTP 200 and an empty ``ExportTraceServiceResponse``. Anything else gets the status the OTLP spec
asks for (404, 415, 400).
"""

from __future__ import annotations

import gzip
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"


class _Handler(BaseHTTPRequestHandler):
    """One exporter connection (HTTP/1.1 keep-alive, as the OTLP exporter's requests session uses)."""

    protocol_version = "HTTP/1.1"
    server: OtlpCaptureServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.rstrip("/").endswith("/v1/traces"):  # Langfuse posts to {host}/api/public/otel/v1/traces
            self._reply(404, b"")
            return
        if self.headers.get_content_type() != PROTOBUF:
            self._reply(415, b"")
            return
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
        except (OSError, DecodeError):
            self._reply(400, b"")
            return
        self.server.store(body, request, self.headers.get("Content-Encoding", ""))
        self._reply(200, ExportTraceServiceResponse().SerializeToString())

    def _reply(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", PROTOBUF)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class OtlpCaptureServer(ThreadingHTTPServer):
    """Receives OTLP/HTTP trace exports and appends each one to ``path`` as a length-prefixed record."""

    daemon_threads = True

    def __init__(self, path: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.path = Path(path)
        self.path.write_bytes(b"")
        self.exports = 0
        self.spans = 0
        self.encodings: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1/traces"

    def store(self, body: bytes, request: ExportTraceServiceRequest, encoding: str) -> None:
        """Append one decompressed export body; counts are kept for the test to cross-check."""
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock, self.path.open("ab") as out:
            out.write(struct.pack(">I", len(body)) + body)
            self.exports += 1
            self.spans += spans
            self.encodings.append(encoding)

    def start(self) -> OtlpCaptureServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="otlp-capture", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def read_records(path: Path) -> Iterator[ExportTraceServiceRequest]:
    """Read a length-prefixed proto capture back (independently of the project's decoder)."""
    data = Path(path).read_bytes()
    pos = 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        pos += 4
        yield ExportTraceServiceRequest.FromString(data[pos : pos + size])
        pos += size
