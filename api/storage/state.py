"""Where the service state lives: the DuckDB file (default) or a PostgreSQL database (``SPANPRISM_STATE_URL``).

The state modules (API keys, job runs, alert destinations, rules and outbox) take a *state cursor*: anything with
``execute(sql, params)`` returning rows to ``fetchone``/``fetchall``/``fetchmany``. They write SQL in the subset
both engines accept (standard DML, ``ON CONFLICT``, ``RETURNING``) with ``?`` parameters, DuckDB's own style
(:class:`spanprism.models.state.StateCursor`):

- on DuckDB the cursor *is* a ``duckdb`` cursor of the server's one connection: the state path is the code that
  ran before this seam existed, statement for statement, with no adapter between;
- on PostgreSQL it is :class:`PgCursor` over a pooled SQLAlchemy connection (psycopg 3), which rewrites ``?`` to
  the driver's ``%s`` once per statement text (cached).

Several processes may share a PostgreSQL store (``shared``): code that must not run twice across replicas asks
``dialect_of(cur)`` for ``FOR UPDATE SKIP LOCKED`` and takes advisory locks on a :class:`StateSession`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from spanprism.models.state import StateCursor

if TYPE_CHECKING:
    from spanprism.api.storage.database import Database


# A single-quoted literal ('' escapes a quote inside) or one of the characters the rewrite touches.
_TOKENS = re.compile(r"'(?:[^']|'')*'|[?%]")


@lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """``?`` → ``%s`` and ``%`` → ``%%`` outside string literals (psycopg reads ``%`` everywhere, literals too)."""
    return _TOKENS.sub(lambda m: {"?": "%s", "%": "%%"}.get(m.group(0), m.group(0).replace("%", "%%")), sql)


class PgCursor:
    """A state cursor over one SQLAlchemy connection to PostgreSQL: DuckDB-style ``?`` SQL, psycopg underneath."""

    dialect = "postgresql"

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self.conn.exec_driver_sql(to_pyformat(sql), tuple(parameters))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        return self.conn.exec_driver_sql(to_pyformat(sql), [tuple(r) for r in rows])


class StateStore(Protocol):
    """The service state's one door: read and write units of work, and whether other processes share it."""

    dialect: str
    shared: bool

    def read(self) -> AbstractContextManager[StateCursor]: ...
    def write(self) -> AbstractContextManager[StateCursor]: ...
    def session(self) -> StateSession | None: ...
    def close(self) -> None: ...


class DuckState:
    """The state tables in the DuckDB file: the server's connection and write lock (one process owns the file)."""

    dialect = "duckdb"
    shared = False

    def __init__(self, database: Database) -> None:
        self.database = database

    def read(self) -> AbstractContextManager[StateCursor]:
        return self.database.read()

    def write(self) -> AbstractContextManager[StateCursor]:
        return self.database.write()

    def session(self) -> None:
        """No session: the DuckDB file's own lock already makes this process the only one."""
        return None

    def close(self) -> None:
        """Nothing of its own to close (the Database closes the file)."""


class PostgresState:
    """The state tables in a PostgreSQL database shared by every replica; migrated on open unless told not to."""

    dialect = "postgresql"
    shared = True

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        from spanprism.api.storage import connect

        if migrate:
            connect.upgrade(url)
        # pre_ping: a replica outlives a database restart or a failover without failing one request per stale conn.
        self.engine: Engine = create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)
        self._session: StateSession | None = None
        self._lock = threading.Lock()

    @contextmanager
    def read(self) -> Iterator[StateCursor]:
        with self.engine.connect() as conn:
            yield PgCursor(conn)

    @contextmanager
    def write(self) -> Iterator[StateCursor]:
        """One transaction: committed when the block ends, rolled back on an error."""
        with self.engine.begin() as conn:
            yield PgCursor(conn)

    def session(self) -> StateSession:
        """This process's long-lived session (advisory locks, liveness), opened on first use."""
        with self._lock:
            if self._session is None:
                self._session = StateSession(self.engine)
            return self._session

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
        self.engine.dispose()


class StateSession:
    """One dedicated PostgreSQL connection for the process's lifetime: its advisory locks end with it.

    Session-level advisory locks belong to a connection, so they live here, outside the pool. When this process
    dies, PostgreSQL ends the session and frees its locks: that is how another replica takes over leadership.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._held: set[int] = set()
        self._connect()

    def _connect(self) -> None:
        self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._held.clear()

    def try_lock(self, key: int) -> bool:
        """Hold advisory lock ``key`` (True when held now, also when already held); reconnects a dropped session
        first, which means every lock it held is gone and must be won again."""
        with self._lock:
            try:
                assert self._conn is not None
                self._conn.execute(text("SELECT 1"))
            except Exception:  # the session died (restart, failover, idle timeout): its locks died with it
                self._reset()
            if key in self._held:
                return True
            assert self._conn is not None
            if self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one():
                self._held.add(key)
                return True
            return False

    def unlock(self, key: int) -> None:
        with self._lock:
            if key in self._held and self._conn is not None:
                self._held.discard(key)
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    def _reset(self) -> None:
        try:
            if self._conn is not None:
                self._conn.invalidate()
        finally:
            self._connect()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()  # ends the session: every advisory lock it held is released
                self._conn = None
                self._held.clear()


def open_state(database: Database, url: str | None, *, migrate: bool = True) -> StateStore:
    """The state store ``url`` names: PostgreSQL for a ``postgresql+psycopg://`` URL, the DuckDB file when None."""
    if url is None:
        return DuckState(database)
    if not url.startswith("postgresql"):
        raise ValueError(f"SPANPRISM_STATE_URL must be a postgresql+psycopg:// URL, not {url.split('://')[0]!r}")
    return PostgresState(url, migrate=migrate)
