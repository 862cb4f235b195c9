"""An OpenAI-compatible ``POST /v1/chat/completions`` server with known tokens and known timing.

The instrumentation libraries under test only see what a real OpenAI endpoint would send, so the server mimics
its wire format closely: a role-only first chunk, one chunk per content token, a finish chunk, and (when the
request sets ``stream_options.include_usage``) a final usage chunk with empty ``choices``; ``usage: null`` on every
other chunk in that mode; ``[DONE]`` at the end. Timing is scripted from the moment the request body has been
read, shaped like a real decode: the role chunk and the first token leave after :data:`FIRST_CHUNK_DELAY_S`
(prefill), each later token :data:`CHUNK_GAP_S` after the one before (the inter-token latency), and the finish and
usage chunks right behind the last token, as the real API sends them. A non-streaming call answers when the last
token would have left. Asking for :data:`FAIL_MODEL` returns an HTTP 429 with an OpenAI error body.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FIRST_CHUNK_DELAY_S = 0.120
CHUNK_GAP_S = 0.015
REQUEST_MODEL = "gpt-4o-mini"
RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
SYSTEM_FINGERPRINT = "fp_5p4npr15m0"
#: The magic model name that makes the server answer 429.
FAIL_MODEL = "spanprism-rate-limited"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the server answers to one kind of request: the completion and its usage."""

    tokens: tuple[str, ...]
    prompt_tokens: int
    cached_tokens: int
    finish_reason: str = "stop"

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }


# Different numbers for the two call shapes, so a row that picked up the other call's usage cannot pass.
NON_STREAM_REPLY = Reply(tokens=("The", " sky", " is", " blue", " today", "."), prompt_tokens=1187, cached_tokens=1024)
STREAM_REPLY = Reply(
    tokens=("Latency", " rose", " because", " prompts", " grew"),
    prompt_tokens=2311,
    cached_tokens=2048,
    finish_reason="length",
)


def stream_chunk_count(reply: Reply, include_usage: bool) -> int:
    """SSE data chunks (``[DONE]`` excluded) a streaming answer carries: role, tokens, finish, usage."""
    return 1 + reply.completion_tokens + 1 + (1 if include_usage else 0)


def chunk_offsets_s(reply: Reply, include_usage: bool) -> list[float]:
    """When each SSE data chunk leaves, in seconds after the request arrived (see the module doc)."""
    tokens = [FIRST_CHUNK_DELAY_S + i * CHUNK_GAP_S for i in range(reply.completion_tokens)]
    trailer = [tokens[-1]] * (2 if include_usage else 1)  # finish (+ usage) chunks, back to back
    return [FIRST_CHUNK_DELAY_S, *tokens, *trailer]


def non_stream_delay_s(reply: Reply) -> float:
    """When a non-streaming answer leaves: when the last token of the same answer streamed would have."""
    return FIRST_CHUNK_DELAY_S + CHUNK_GAP_S * (reply.completion_tokens - 1)


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive like the real API, Nagle off so each chunk leaves when written."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; requests are recorded in server.requests instead

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # Wall clock first: if the thread is descheduled in between, the schedule only starts later (never early).
        received_ns = time.time_ns()
        received = time.perf_counter()
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            request = json.loads(body)
        except ValueError:
            self._send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        entry = self.server.record(request, dict(self.headers), received_ns)
        if request.get("model") == FAIL_MODEL:
            self._send_rate_limited(entry)
        elif request.get("stream"):
            self._send_stream(request, entry, received)
        else:
            self._send_completion(entry, received)

    def _send_json(
        self,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
        entry: dict[str, Any] | None = None,
    ) -> None:
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

    def _send_rate_limited(self, entry: dict[str, Any]) -> None:
        error = {
            "message": "Rate limit reached for requests (spanprism fake server).",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
        entry["first_byte_ns"] = time.time_ns()
        self._send_json(429, {"error": error}, {"x-request-id": entry["request_id"], "retry-after": "1"}, entry)

    def _send_completion(self, entry: dict[str, Any], received: float) -> None:
        reply = NON_STREAM_REPLY
        envelope = self.server.envelope("chat.completion")
        entry["response_id"] = envelope["id"]
        _sleep_until(received + non_stream_delay_s(reply))
        entry["first_byte_ns"] = time.time_ns()
        payload = {
            **envelope,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(reply.tokens), "refusal": None},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": reply.usage(),
            "service_tier": "default",
        }
        self._send_json(200, payload, {"x-request-id": entry["request_id"], "openai-processing-ms": "1"}, entry)

    def _send_stream(self, request: dict[str, Any], entry: dict[str, Any], received: float) -> None:
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        chunks = self.server.stream_chunks(STREAM_REPLY, include_usage)
        entry["response_id"] = chunks[0]["id"]
        entry["chunks"] = len(chunks)
        # Headers go out at once (as the real API does); the first data chunk after the scripted delay.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", entry["request_id"])
        self.end_headers()
        for i, (chunk, offset) in enumerate(zip(chunks, chunk_offsets_s(STREAM_REPLY, include_usage), strict=True)):
            _sleep_until(received + offset)
            if i == 0:
                entry["first_byte_ns"] = time.time_ns()
            self._write_chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        entry["last_byte_ns"] = time.time_ns()
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")  # the zero-length chunk ends the chunked body

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def _sleep_until(deadline: float) -> None:
    """Sleep to an absolute perf_counter deadline, so per-chunk work does not accumulate as drift."""
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)


class FakeOpenAIServer(ThreadingHTTPServer):
    """The fake endpoint; ``requests`` logs every request: body, headers, ids answered and wall-clock times.

    Times are ``time.time_ns()`` (the clock span timestamps use), each stamped on the safe side of its event so
    that tests can bound span times by them: ``received_ns`` after the body was read, ``first_byte_ns`` just before
    the first data chunk (or the whole body) was written, ``last_byte_ns`` just before the last bytes the client
    waits for (the JSON body, or ``[DONE]``).
    """

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def record(self, request: dict[str, Any], headers: dict[str, str], received_ns: int) -> dict[str, Any]:
        """Log one request; returns its (mutable) log entry, holding the ``x-request-id`` to answer with."""
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

    def by_response_id(self, response_id: str) -> dict[str, Any]:
        """The log entry of the request answered with ``response_id``."""
        with self._lock:
            return next(e for e in self.requests if e["response_id"] == response_id)

    def envelope(self, obj: str) -> dict[str, Any]:
        """The fields every completion and chunk carries; a fresh response id per call."""
        with self._lock:
            n = next(self._ids)
        return {
            "id": f"chatcmpl-spanprism{n:06d}",
            "object": obj,
            "created": int(time.time()),
            "model": RESPONSE_MODEL,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def stream_chunks(self, reply: Reply, include_usage: bool) -> list[dict[str, Any]]:
        """The SSE data objects of one streamed answer, in order, sharing one response id."""
        base = self.envelope("chat.completion.chunk")
        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            entry = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [entry], **extra}

        chunks = [choice({"role": "assistant", "content": "", "refusal": None})]
        chunks += [choice({"content": token}) for token in reply.tokens]
        chunks.append(choice({}, reply.finish_reason))
        if include_usage:
            chunks.append({**base, "choices": [], "usage": reply.usage()})
        return chunks

    def start(self) -> FakeOpenAIServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
