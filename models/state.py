"""The shape of a *state cursor*: what the service-state code (keys, job runs, alerts) writes its SQL through.

A ``duckdb`` cursor is one as it is; on PostgreSQL it is ``api/storage/state.PgCursor``. The SQL is the subset both
engines accept, with DuckDB's ``?`` parameters. It lives here, below both ``api`` and ``attribution``, because
job runs (``attribution/passes/runs.py``) are state too.
"""

from __future__ import annotations

from typing import Any, Protocol


class StateCursor(Protocol):
    """Runs one statement with ``?`` parameters; the result has ``fetchone``/``fetchall``/``fetchmany``."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


def dialect_of(cur: StateCursor) -> str:
    """``postgresql`` for a PostgreSQL state cursor, ``duckdb`` for anything else (a DuckDB cursor/connection)."""
    return getattr(cur, "dialect", "duckdb")
