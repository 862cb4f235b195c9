"""An Anthropic Messages API (``POST /v1/messages``) server with known tokens, cache counts and timing.

It mimics the wire format the ``anthropic`` SDK parses: a non-streaming ``message`` object whose ``usage`` has
Anthropic's *exclusive* ``input_tokens`` plus ``cache_read_input_tokens`` / ``cache_creation_input_tokens`` and the
``cache_creation`` split by TTL; a stream of named SSE events (``message_start`` whose usage says
``output_tokens: 1`` as the real API does, ``content_block_start``, ``ping``, one ``content_block_delta`` per token,
``content_block_stop``, ``message_delta`` with the final cumulative ``output_tokens``, ``message_stop``). Timing is
scripted as in :mod:`instrumented.fake_openai`: the first token after :data:`FIRST_TOKEN_DELAY_S`, then one per
:data:`TOKEN_GAP_S`. Asking for :data:`FAIL_MODEL` answers HTTP 429 with an Anthropic error body.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FIRST_TOKEN_DELAY_S = 0.100
TOKEN_GAP_S = 0.012
REQUEST_MODEL = "claude-sonnet-4-5"
RESPONSE_MODEL = "claude-sonnet-4-5-20250929"
FAIL_MODEL = "spanprism-rate-limited"


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer: tokens and Anthropic's usage (``uncached`` is Anthropic's exclusive ``input_tokens``)."""

    tokens: tuple[str, ...]
    uncached: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int
    stop_reason: str = "end_turn"

    @property
    def output_tokens(self) -> int:
        return len(self.tokens)

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def input_tokens(self) -> int:
        """The whole prompt, as spanprism stores it (inclusive of cache reads and writes)."""
        return self.uncached + self.cache_read + self.cache_write

    def usage(self, output_tokens: int | None = None) -> dict[str, Any]:
        return {
            "input_tokens": self.uncached,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write_5m,
                "ephemeral_1h_input_tokens": self.cache_write_1h,
            },
            "output_tokens": self.output_tokens if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }


# Different numbers per call shape, so a row that picked up the other call's usage cannot pass.
NON_STREAM_REPLY = Reply(("The", " sky", " is", " blue", "."), uncached=37, cache_read=1536, cache_write_5m=210,
                         cache_write_1h=0)  # fmt: skip
STREAM_REPLY = Reply(("Latency", " rose", " because", " prompts", " grew", " longer"), uncached=52,
                     cache_read=2048, cache_write_5m=300, cache_write_1h=100, stop_reason="max_tokens")  # fmt: skip


def token_offsets_s(reply: Reply) -> list[float]:
    """When each text delta leaves, in seconds after the request arrived."""
    return [FIRST_TOKEN_DELAY_S + i * TOKEN_GAP_S for i in range(reply.output_tokens)]


def non_stream_delay_s(reply: Reply) -> float:
    """A non-streaming answer leaves when the last token of the same answer streamed would have."""
    return token_offsets_s(reply)[-1]


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, Nagle off so each SSE event leaves when written."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: FakeAnthropicServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received_ns, received = time.time_ns(), time.perf_counter()
        if self.path.split("?", 1)[0].rstrip("/") != "/v1/messages":
            self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
            return
        request = json.loads(body)
        entry = self.server.record(request, dict(self.headers), received_ns)
        if request.get("model") == FAIL_MODEL:
            entry["first_byte_ns"] = time.time_ns()
            error = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited (fake)."}}
            self._send_json(429, error, {"request-id": entry["request_id"], "retry-after": "1"}, entry)
        elif request.get("stream"):
            self._send_stream(entry, received)
        else:
            reply = NON_STREAM_REPLY
            message = self.server.message(reply, entry)
            _sleep_until(received + non_stream_delay_s(reply))
            entry["first_byte_ns"] = time.time_ns()
            self._send_json(200, message, {"request-id": entry["request_id"]}, entry)

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None,
                   entry: dict[str, Any] | None = None) -> None:  # fmt: skip
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if entry is not None:
            entry["last_byte_ns"] = time.time_ns()
        self.wfile.write(data)

    def _send_stream(self, entry: dict[str, Any], received: float) -> None:
        reply = STREAM_REPLY
        message = {**self.server.message(reply, entry), "content": [], "stop_reason": None, "usage": reply.usage(1)}
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", entry["request_id"])
        self.end_headers()
        self._event("message_start", {"type": "message_start", "message": message})
        self._event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}})  # fmt: skip
        self._event("ping", {"type": "ping"})
        for i, (token, offset) in enumerate(zip(reply.tokens, token_offsets_s(reply), strict=True)):
            _sleep_until(received + offset)
            if i == 0:
                entry["first_byte_ns"] = time.time_ns()
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}}
            self._event("content_block_delta", delta)
        self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
        usage = {k: v for k, v in reply.usage().items() if k != "cache_creation" and k != "service_tier"}
        self._event("message_delta", {"type": "message_delta", "usage": usage,
                                      "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None}})  # fmt: skip
        entry["last_byte_ns"] = time.time_ns()
        self._event("message_stop", {"type": "message_stop"})
        self._write_chunk(b"")

    def _event(self, name: str, data: dict[str, Any]) -> None:
        self._write_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)


class FakeAnthropicServer(ThreadingHTTPServer):
    """The fake endpoint; ``requests`` logs every request with its ids and ``time.time_ns`` stamps.

    ``received_ns`` is taken after the body was read, ``first_byte_ns`` just before the first token (or the whole
    body) was written, ``last_byte_ns`` just before the last event the client waits for.
    """

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, request: dict[str, Any], headers: dict[str, str], received_ns: int) -> dict[str, Any]:
        with self._lock:
            n = next(self._ids)
            entry = {
                "body": request,
                "headers": {k.lower(): v for k, v in headers.items()},
                "request_id": f"req_spanprism{n:06d}",
                "response_id": None,
                "received_ns": received_ns,
            }
            self.requests.append(entry)
        return entry

    def message(self, reply: Reply, entry: dict[str, Any]) -> dict[str, Any]:
        """A complete ``message`` object for ``reply`` with a fresh ``msg_`` id (logged in ``entry``)."""
        with self._lock:
            n = next(self._ids)
        entry["response_id"] = f"msg_spanprism{n:06d}"
        return {
            "id": entry["response_id"],
            "type": "message",
            "role": "assistant",
            "model": RESPONSE_MODEL,
            "content": [{"type": "text", "text": "".join(reply.tokens)}],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": reply.usage(),
        }

    def by_response_id(self, response_id: str) -> dict[str, Any]:
        with self._lock:
            return next(e for e in self.requests if e["response_id"] == response_id)

    def start(self) -> FakeAnthropicServer:
        threading.Thread(target=self.serve_forever, name="fake-anthropic", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
