"""The server's one handle on the DuckDB file: shared reads, serialized writes.

DuckDB allows one writing *process*; inside it, many cursors of one connection may read at once, and concurrent
writers only conflict. The service keeps writes to one at a time with ``write_lock`` (the OTLP writer thread,
attribution passes, the alert outbox and API edits all take it), so a write never fails on a conflict and the file
has exactly one writer, as DESIGN.md asks. ``generation`` moves on every finished attribution pass so read
caches (dashboard panels) know when to drop their answers; ``listing`` moves when ingest lists new series.

``state`` is where the service state lives (:mod:`spanprism.api.storage.state`): this file by default, or a
PostgreSQL database shared by several replicas when ``state_url`` is given.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from spanprism.api.storage import connect as db
from spanprism.api.storage.state import StateStore, open_state
from spanprism.models.transaction import transaction

log = logging.getLogger("spanprism.database")
#: How often a process sharing its state database re-reads whether another process finished a pass (seconds).
SHARED_GENERATION_S = 2.0


class Database:
    """An open, migrated DuckDB file with a read cursor factory and a process-wide write lock."""

    def __init__(self, path: str | os.PathLike[str], *, migrate: bool = True, state_url: str | None = None) -> None:
        self.path = Path(path)
        self.con = db.open_db(self.path, migrate=migrate)
        self.write_lock = threading.RLock()
        self._generation = 0
        self._shared_mark: tuple = ()
        self._shared_read_at = -math.inf
        self.listing = 0
        self._closed = False
        try:
            self.state: StateStore = open_state(self, state_url, migrate=migrate)
        except BaseException:
            self.con.close()
            raise

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own for one request or job step (cursors are cheap; one per thread is required)."""
        cur = self.con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside BEGIN … COMMIT, holding the write lock for the whole unit of work."""
        with self.write_lock, transaction(self.con) as cur:
            yield cur

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor holding the write lock, for code that manages its own transactions (ingest, attribution)."""
        with self.write_lock:
            cur = self.con.cursor()
            try:
                yield cur
            finally:
                cur.close()

    @property
    def generation(self) -> int | tuple:
        """Moves whenever stored results may have changed: this process's passes, and with a shared state database
        (``state.shared``) the passes any worker or replica finished (read from ``job_runs`` and ``shard_leases``
        at most every :data:`SHARED_GENERATION_S`, the lag a cached answer may have behind another's pass)."""
        if not self.state.shared:
            return self._generation
        now = time.monotonic()
        if now - self._shared_read_at >= SHARED_GENERATION_S:
            self._shared_read_at = now
            try:
                with self.state.read() as cur:
                    self._shared_mark = tuple(cur.execute(
                        "SELECT count(*), max(finished_at),"
                        " (SELECT coalesce(sum(passes), 0) FROM shard_leases) FROM job_runs"
                        " WHERE status IN ('succeeded', 'failed')"
                    ).fetchall()[0])  # fmt: skip
            except Exception:  # the state database is away: keep the last mark (answers age, nothing fails)
                log.warning("could not read the shared results generation", exc_info=True)
        return (self._generation, *self._shared_mark)

    def bump_generation(self) -> None:
        """Tell read caches that stored results changed (call after an attribution pass)."""
        self._generation += 1

    def bump_listing(self) -> None:
        """Tell the series-list cache that series were added outside a pass (OTLP writer, uploads)."""
        self.listing += 1

    def close(self) -> None:
        """Close the connection once (idempotent)."""
        if not self._closed:
            self._closed = True
            self.state.close()
            with self.write_lock:
                self.con.close()
