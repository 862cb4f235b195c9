"""The shape of a *state cursor*: what the service-state code (keys, job runs, alerts) writes its SQL through.

A ``duckdb`` cursor is one as it is; on PostgreSQL it is ``api/storage/state.PgCursor``. The SQL is the subset both
engines accept, with DuckDB's ``?`` parameters. It lives here, below both ``api`` and ``attribution``, because
job runs (``attribution/passes/runs.py``) are state too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol


class StateCursor(Protocol):
    """Runs one statement with ``?`` parameters; the result has ``fetchone``/``fetchall``/``fetchmany``."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


#: Opens a committed unit of work on the state store (``db.state.write``; ``models.transaction.unit_on`` for a
#: DuckDB connection): what job runs and the detection results are written through.
StateUnit = Callable[[], AbstractContextManager[StateCursor]]


def dialect_of(cur: StateCursor) -> str:
    """``postgresql`` for a PostgreSQL state cursor, ``duckdb`` for anything else (a DuckDB cursor/connection)."""
    return getattr(cur, "dialect", "duckdb")


def key_in(cur: StateCursor, column: str, keys: Sequence[str]) -> tuple[str, list[Any]]:
    """``column`` is one of ``keys``: one list parameter on both engines (a shard's series can number thousands,
    more than PostgreSQL's 65,535 bind parameters as ``IN (?, ?, …)``)."""
    if dialect_of(cur) == "postgresql":
        return f"{column} = ANY(?)", [list(keys)]
    return f"{column} IN (SELECT unnest(?))", [list(keys)]


def execute_many(cur: StateCursor, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """One statement over many parameter rows (both cursors have ``executemany``); nothing for no rows (DuckDB
    refuses an empty executemany)."""
    if rows:
        cur.executemany(sql, rows)  # type: ignore[attr-defined]
