"""The OTLP receiver's engine: decode off the event loop, a bounded span queue, one group-committing writer.

Decode + normalize is CPU-bound and pure, so it runs in worker processes (``ingest_workers`` > 1, spawn
context, created on the first body large enough to pay for the pickling) or in a thread. The decoded rows wait
in a queue bounded in *spans* (``ingest_queue_spans``); when it is full the receiver answers 503 and the
client retries later, so memory stays bounded whatever the load. One writer thread takes everything waiting
and stores it as ONE DuckDB transaction under the process-wide write lock (a group commit: per-transaction
costs are paid once per group, not once per request), then resolves each request's future with its own
counts — a request is acknowledged only after its rows are committed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb

from spanprism.api.metrics import Metrics
from spanprism.api.services.new_series import NewSeries
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database
from spanprism.ingest.load import BatchCounts, store_batches
from spanprism.ingest.otlp_http import process_body
from spanprism.ingest.records import Batch
from spanprism.ingest.workers import worker_pool

log = logging.getLogger("spanprism.ingest")

#: Bodies at least this large are decoded in a worker process; smaller ones cost more to ship than to decode.
PROCESS_MIN_BYTES = 32 << 10
#: How long the writer waits for bodies still being decoded to join its group (a group commit pays the loader's
#: per-transaction costs — the fold statement, the commit — once; measured at ~30 ms, about what 1,000 spans cost).
LINGER_S = 0.05
#: Spans in a group past which the writer stops waiting for more.
GROUP_SPANS = 8_000


_EMPTY_BODY = {
    "source": "warm-up",
    "content_type": "application/x-protobuf",
    "content_encoding": None,
    "limit": 0,
    "tenant_attribute": None,
}


class QueueFull(Exception):
    """The ingest queue holds ``ingest_queue_spans`` spans already: answer 503 with Retry-After."""


class ShuttingDown(Exception):
    """The service is stopping and takes no more requests."""


@dataclass(slots=True)
class _Item:
    batch: Batch
    spans: int
    future: Future[BatchCounts]


class IngestService:
    """Decode pool + bounded span queue + the single writer thread of OTLP requests."""

    def __init__(self, settings: Settings, db: Database, metrics: Metrics) -> None:
        self.settings, self.db, self.metrics = settings, db, metrics
        self.capacity = max(1, settings.ingest_queue_spans)
        self.linger_s = LINGER_S  # how long the writer waits for bodies still decoding (a test lengthens it)
        self._cond = threading.Condition()
        self._pending: list[_Item] = []
        self._depth = 0  # spans queued or being written (released after their commit)
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spanprism-decode")
        self._processes: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # Bodies read but not yet decoded also hold memory: at most this many requests decode (or wait to) at once.
        self.max_decoding = 4 * max(1, settings.ingest_workers)
        self._decoding = 0  # only touched on the event loop thread
        self.new_series = NewSeries()
        self._progress_at = time.monotonic()  # last commit, or when the queue last became non-empty
        self._limits = settings.ingest_limits(http=True)

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._writer = threading.Thread(target=self._run, name="spanprism-ingest-writer", daemon=True)
        self._writer.start()

    def stop(self) -> None:
        """Write what is queued, then stop the writer and the decode pools."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        self._threads.shutdown(wait=True, cancel_futures=True)
        with self._pool_lock:
            if self._processes is not None:
                self._processes.shutdown(wait=True, cancel_futures=True)
                self._processes = None

    # --- decode ----------------------------------------------------------------------------------------------
    def _executor(self, size: int) -> Executor:
        if self.settings.ingest_workers <= 1 or size < PROCESS_MIN_BYTES:
            return self._threads
        with self._pool_lock:
            if self._processes is None:
                self._processes = worker_pool(self.settings.ingest_workers)  # workers die with the server
                # The pool spawns workers on demand; start (and import) all of them now, not during later requests.
                for _ in range(self.settings.ingest_workers):
                    self._processes.submit(process_body, b"", **_EMPTY_BODY)
            return self._processes

    async def decode(self, body: bytes, *, source: str, content_type: str, content_encoding: str | None
                     ) -> Batch:  # fmt: skip
        """Decode + normalize one body off the event loop. Raises ``ingest.decode.DecodeError`` (and subclasses)."""
        if self._stopping:
            raise ShuttingDown("the ingest service is stopping")
        args = (body,)
        kwargs = {
            "source": source,
            "content_type": content_type,
            "content_encoding": content_encoding,
            "limit": self._limits.max_decompressed_bytes,
            "tenant_attribute": self.settings.tenant_attribute,
            "limits": self._limits,
        }
        executor = self._executor(len(body))
        try:
            return await asyncio.wrap_future(executor.submit(process_body, *args, **kwargs))
        except BrokenProcessPool:  # a worker died (OOM kill): start a fresh pool next time, decode here now
            log.error("decode worker process died; restarting the pool")
            with self._pool_lock:
                if self._processes is executor:
                    self._processes = None
            return await asyncio.wrap_future(self._threads.submit(process_body, *args, **kwargs))

    # --- queue -----------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._depth

    def stalled_s(self) -> float:
        """Seconds spans have been waiting without a commit (0 when nothing waits): a stuck writer shows here."""
        if not self._depth:
            return 0.0
        return time.monotonic() - self._progress_at

    @property
    def full(self) -> bool:
        """No room: the span queue is at capacity, or enough bodies are already being read or decoded."""
        return self._depth >= self.capacity or self._decoding >= self.max_decoding

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the ``max_decoding`` places from reading a body until its rows are queued (event loop only).

        Raises :class:`QueueFull` when there is no room, before anything is read.
        """
        if self.full:
            raise QueueFull(f"ingest is saturated ({self._depth} spans queued, {self._decoding} bodies decoding)")
        self._decoding += 1
        try:
            yield
        finally:
            self._decoding -= 1
            with self._cond:  # a writer lingering for this body stops waiting (see _linger)
                self._cond.notify_all()

    def enqueue(self, batch: Batch) -> Future[BatchCounts]:
        """Queue decoded rows for the writer; the future resolves with the counts once they are committed.

        Raises :class:`QueueFull` when they do not fit (an empty queue takes any one request, so a request
        larger than the whole queue is still stored rather than refused forever).
        """
        spans = max(1, batch.spans_seen)
        future: Future[BatchCounts] = Future()
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the ingest service is stopping")
            if self._depth and self._depth + spans > self.capacity:
                raise QueueFull(f"{self._depth} spans are waiting to be written (limit {self.capacity})")
            self._pending.append(_Item(batch, spans, future))
            if not self._depth:
                self._progress_at = time.monotonic()
            self._depth += spans
            self.metrics.queue_depth.set(self._depth)
            self._cond.notify()
        return future

    # --- writer ----------------------------------------------------------------------------------------------
    def _linger(self) -> None:
        """Under ``_cond`` with something pending: wait (at most ``linger_s``, :data:`LINGER_S` by default) while
        other admitted bodies are still being read or decoded, so they commit in this group rather than each alone.

        One client waits for each answer before sending again, so nothing else is in flight and nothing is waited
        for; several clients share one commit instead of queueing for several.
        """
        deadline = time.monotonic() + self.linger_s
        while not self._stopping and self._decoding > 0 and sum(i.spans for i in self._pending) < GROUP_SPANS:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                self._linger()
                items, self._pending = self._pending, []
            results = self._write(items)
            with self._cond:  # free the queue before answering, so an acknowledged client may send again
                self._progress_at = time.monotonic()
                self._depth -= sum(item.spans for item in items)
                self.metrics.queue_depth.set(self._depth)
            for item, result in zip(items, results, strict=True):
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    self.metrics.spans_stored.inc(result.calls_stored)
                    self.metrics.spans_quarantined.inc(result.quarantined)
                    item.future.set_result(result)

    def _write(self, items: list[_Item]) -> list[BatchCounts | BaseException]:
        """One transaction for the whole group; if it fails, each request alone so one bad one fails alone."""
        batches = [item.batch for item in items]
        try:
            with self.db.writer() as cur:
                counts = list(store_batches(cur, batches))
                self._list_new_series(cur, batches)
                return counts
        except Exception:
            if len(items) == 1:
                log.exception("storing an OTLP request failed")
                return [self._failed()]
        results: list[BatchCounts | BaseException] = []
        for batch in batches:
            try:
                with self.db.writer() as cur:
                    results.extend(store_batches(cur, [batch]))
                    self._list_new_series(cur, [batch])
            except Exception:
                log.exception("storing an OTLP request failed")
                results.append(self._failed())
        return results

    def _list_new_series(self, cur: duckdb.DuckDBPyConnection, batches: list[Batch]) -> None:
        """List the batches' new series now, not at the next pass, and tell the series-list cache."""
        if self.new_series.register(cur, [b.calls for b in batches]):
            self.db.bump_listing()

    @staticmethod
    def _failed() -> BaseException:
        return RuntimeError("storing the spans failed; see the server log")


def ingest_service(settings: Settings, db: Database, metrics: Metrics, app_state: object) -> IngestService:
    """Service factory: the OTLP ingest engine, kept on ``app.state.ingest`` for the routers."""
    service = IngestService(settings, db, metrics)
    app_state.ingest = service  # type: ignore[attr-defined]
    return service
