"""The thin path of the hot dashboard lists: ``GET /api/v1/series`` and ``GET /api/v1/regressions`` answered from
pre-encoded bodies, in front of FastAPI's routing and dependency solving.

Why: with 50 dashboards polling while ingest runs, a cached list still cost ~0.75 ms of the server's one Python core
per answer, 61 % of it FastAPI matching the route and solving its dependencies (auth, settings, database, paging,
query parameters). :class:`HotReads` is an ASGI middleware that answers a *repeat* of a request from bytes the route
itself produced:

- **Same answer.** An entry is the route's own 200 answer (body and headers) for one path and raw query string,
  captured the first time it is asked. Any query variant therefore answers exactly what the route would; a request
  not seen yet, a non-200 answer, another method or path goes through the route untouched.
- **Same auth.** The route's own check (:func:`spanprism.api.deps.require` ``("read")``: bearer key, the OTLP key
  header, ``read_open``; its principal cache, so a revoked key is refused at once when revoked through the API and
  within that cache's lifetime otherwise) runs before any cached byte is sent. A refused request goes through the
  route, which answers 401/403 exactly as before.
- **Same lifetime.** An entry holds while :func:`spanprism.api.routers.series.list_stamp` is unchanged: the
  database generation (attribution passes, the only writers of rollups, baselines and regressions), the listing
  counter (ingest registering a new series) and the current base-grain bucket (the series list's "now"). An answer
  computed while the stamp moved is passed on but not kept.
- **HTTP caching.** A strong ``ETag`` per entry (per coding), ``If-None-Match`` → 304, and gzip when the client
  accepts it, compressed once per entry, i.e. at most once per cache generation and query.

The cache is only touched on the event loop, so it needs no lock; it holds at most :data:`MAX_ENTRIES` answers.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from starlette.requests import Request

from spanprism.api.deps import require
from spanprism.api.routers.series import list_stamp
from spanprism.api.storage.database import Database

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The lists every dashboard polls; both are cached by the routes per ``list_stamp`` (or a coarser stamp).
HOT_PATHS = frozenset({"/api/v1/series", "/api/v1/regressions"})
#: Answers kept (one per path and query string); the oldest is dropped first. ~64 KB each at 100 series.
MAX_ENTRIES = 256
#: Bodies smaller than this are sent as they are: gzip would save little and cost a header.
GZIP_MIN_BYTES = 1024
_VARY = (b"vary", b"accept-encoding")


@dataclass(slots=True)
class Entry:
    """One captured answer: the route's headers (without length), its body, and the lazily gzipped body."""

    stamp: tuple[Any, ...]
    headers: list[tuple[bytes, bytes]]
    body: bytes
    etag: bytes
    gzipped: bytes | None = field(default=None)

    @classmethod
    def capture(cls, stamp: tuple[Any, ...], headers: list[tuple[bytes, bytes]], body: bytes) -> Entry:
        kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"etag", b"vary")]
        digest = hashlib.blake2b(body, digest_size=12).hexdigest()
        return cls(stamp, kept, body, f'"{digest}"'.encode())

    @property
    def gzip_etag(self) -> bytes:
        # A strong validator differs per content coding (RFC 9110 §8.8.3); both name this entry for If-None-Match.
        return self.etag[:-1] + b'-gz"'

    def gzip_body(self) -> bytes:
        if self.gzipped is None:
            self.gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)  # mtime=0: the same bytes every time
        return self.gzipped


def accepts_gzip(value: bytes) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip: ``gzip`` (or ``*`` when gzip is not named) with q > 0."""
    named: dict[str, float] = {}
    for item in value.decode("latin-1").lower().split(","):
        coding, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, number = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(number)
                except ValueError:
                    q = 0.0
        named[coding.strip()] = q
    q = named.get("gzip", named.get("x-gzip", named.get("*", 0.0)))
    return q > 0


def etag_matches(value: bytes, tags: tuple[bytes, ...]) -> bool:
    """``If-None-Match`` by weak comparison (RFC 9110 §13.1.2): ``*`` or any listed tag, ``W/`` prefix ignored."""
    for item in value.split(b","):
        tag = item.strip()
        if tag == b"*":
            return True
        if tag.startswith(b"W/"):
            tag = tag[2:]
        if tag in tags:
            return True
    return False


class HotReads:
    """ASGI middleware: answers repeated GETs of :data:`HOT_PATHS` from captured answers (see the module doc)."""

    def __init__(self, app: ASGIApp, *, paths: frozenset[str] = HOT_PATHS, max_entries: int = MAX_ENTRIES) -> None:
        self.app = app
        self.paths = paths
        self.max_entries = max_entries
        self.entries: dict[tuple[str, bytes], Entry] = {}
        self._check = require("read")  # the very dependency the routes declare as ReadAuth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        database = getattr(state, "db", None)
        if database is None or not state.settings.hot_reads:  # before the lifespan opened the file, or turned off
            await self.app(scope, receive, send)
            return
        try:
            await self._check(Request(scope, receive))
        except HTTPException:
            await self.app(scope, receive, send)  # the route refuses it with its own 401/403
            return
        key = (scope["path"], scope["query_string"])
        stamp = list_stamp(database)
        entry = self.entries.get(key)
        if entry is None or entry.stamp != stamp:
            entry = await self._through_route(scope, receive, send, key, stamp, database)
            if entry is None:
                return
        await self._answer(entry, scope, send)

    async def _through_route(self, scope: Scope, receive: Receive, send: Send, key: tuple[str, bytes],
                             stamp: tuple[Any, ...], database: Database) -> Entry | None:  # fmt: skip
        """Run the route, buffering its answer; keep it when 200 and the stamp held (None: already passed on)."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            else:
                await send(message)

        await self.app(scope, receive, capture)  # an exception propagates before anything was sent: a plain 500
        if start is None:  # nothing to pass on (the app ended without answering)
            return None
        body = b"".join(chunks)
        if start["status"] != 200 or list_stamp(database) != stamp:
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return None
        self.entries.pop(key, None)
        if len(self.entries) >= self.max_entries:
            self.entries.pop(next(iter(self.entries)))
        entry = self.entries[key] = Entry.capture(stamp, list(start.get("headers", [])), body)
        return entry

    @staticmethod
    async def _answer(entry: Entry, scope: Scope, send: Send) -> None:
        if_none_match = accept_encoding = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if_none_match = value
            elif name == b"accept-encoding":
                accept_encoding = value
        zipped = len(entry.body) >= GZIP_MIN_BYTES and accept_encoding is not None and accepts_gzip(accept_encoding)
        etag = entry.gzip_etag if zipped else entry.etag
        if if_none_match is not None and etag_matches(if_none_match, (entry.etag, entry.gzip_etag)):
            await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", etag), _VARY]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = entry.gzip_body() if zipped else entry.body
        headers = [*entry.headers, (b"content-length", str(len(body)).encode()), (b"etag", etag), _VARY]
        if zipped:
            headers.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
