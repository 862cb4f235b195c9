"""Opening the DuckDB file and keeping its schema (and a PostgreSQL state database's) current with Alembic.

By default the service state and ``llm_calls`` share one DuckDB file. Migrations run through duckdb_engine/
SQLAlchemy; bulk reads and writes use a raw ``duckdb`` connection (Arrow in and out, no ORM overhead). With
``SPANPRISM_STATE_URL`` the same history also migrates a PostgreSQL database holding only the state tables
(``migrations/dialect.py``); every function here takes a DuckDB path or a SQLAlchemy URL.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from spanprism import migrations
from spanprism.migrations import dialect  # noqa: F401  (registers the duckdb implementation with Alembic)

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


class DatabaseLockedError(RuntimeError):
    """Another process (usually ``spanprism serve``) holds the DuckDB write lock."""


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations, independent of the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def is_url(target: str | os.PathLike[str]) -> bool:
    """True for a SQLAlchemy URL (``postgresql+psycopg://…``), False for a DuckDB file path."""
    return isinstance(target, str) and "://" in target


def _url(target: str | os.PathLike[str]) -> str:
    return str(target) if is_url(target) else f"duckdb:///{Path(target)}"


def engine_for(target: str | os.PathLike[str]) -> Engine:
    """A SQLAlchemy engine over the DuckDB file or the database at a URL (migrations, the state store)."""
    return create_engine(_url(target))


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config("duckdb://")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for a new file)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


#: Advisory lock key serializing migrations on a shared PostgreSQL database ("spanprism migrate" as an integer).
MIGRATION_LOCK = 0x5350_4D49


def _run(engine: Engine, action: str, revision: str) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # replicas starting together: one migrates, the others then see head
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def upgrade(path: str | os.PathLike[str], revision: str = "head") -> str | None:
    """Migrate the file (or URL) at ``path`` up to ``revision``; returns the revision reached."""
    engine = engine_for(path)
    try:
        _run(engine, "upgrade", revision)
        return current_revision(engine)
    finally:
        engine.dispose()


def downgrade(path: str | os.PathLike[str], revision: str) -> str | None:
    """Migrate the file (or URL) at ``path`` down to ``revision`` (``base`` empties it)."""
    engine = engine_for(path)
    try:
        _run(engine, "downgrade", revision)
        return current_revision(engine)
    finally:
        engine.dispose()


def open_db(
    path: str | os.PathLike[str], *, migrate: bool = True, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, upgrading its schema first on first use (unless ``migrate`` is False)."""
    path = str(path)
    if path == ":memory:":
        raise ValueError("spanprism needs a DuckDB file (migrations and data share it), not :memory:")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        if migrate and not read_only:
            upgrade(path)
        return duckdb.connect(path, read_only=read_only)
    # A held write lock is an IO error, wrapped by SQLAlchemy when the migration check opens the file first.
    except (duckdb.IOException, OperationalError) as exc:
        if "lock" in str(exc).lower():
            raise DatabaseLockedError(
                f"{path} is locked by another process (is `spanprism serve` running?): {exc}"
            ) from exc
        raise
