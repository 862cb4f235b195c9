"""Alembic environment for spanprism (DuckDB through duckdb_engine).

Frozen history: nothing here imports application code. The caller passes a live connection in
``config.attributes["connection"]`` (see ``api/storage/connect.py``) or a URL in ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from spanprism.migrations import dialect  # noqa: F401  (registers the duckdb implementation)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=None, render_as_batch=False)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `spanprism db upgrade`")
run_migrations_online()
