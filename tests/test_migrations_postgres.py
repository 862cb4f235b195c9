"""The one migration history on PostgreSQL: a state-only schema that walks up, down and up again.

A PostgreSQL database holds only the service state (``SPANPRISM_STATE_URL``); the data tables' steps are skipped
there. Every state table's columns equal the DuckDB file's, so the state code reads the same rows on both.
"""

from __future__ import annotations

import threading

import duckdb
import pytest
from sqlalchemy import create_engine, inspect

from spanprism.api.storage import connect as db

pytestmark = pytest.mark.postgres

DATA_TABLES = {"llm_calls", "llm_call_spans", "span_links", "ingest_batches", "quarantine", "series", "series_rollups",
               "rollup_dimensions", "rollup_batches"}  # fmt: skip


def _pg_columns(url: str) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        return {t: [c["name"] for c in insp.get_columns(t)] for t in insp.get_table_names()}
    finally:
        engine.dispose()


def _duck_columns(path) -> dict[str, list[str]]:
    con = duckdb.connect(str(path))
    try:
        rows = con.sql("SELECT table_name, column_name FROM information_schema.columns"
                       " ORDER BY table_name, ordinal_position").fetchall()  # fmt: skip
    finally:
        con.close()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def test_up_down_up_on_postgres(postgres_url, tmp_path):
    assert db.upgrade(postgres_url) == db.head_revision()
    pg = _pg_columns(postgres_url)
    duck_path = tmp_path / "ref.duckdb"
    db.upgrade(duck_path)
    duck = _duck_columns(duck_path)
    assert set(pg) == set(duck) - DATA_TABLES  # the state tables and alembic_version, nothing else
    for table, columns in pg.items():
        assert columns == duck[table], table
    assert db.downgrade(postgres_url, "base") is None
    assert set(_pg_columns(postgres_url)) == {"alembic_version"}
    assert db.upgrade(postgres_url) == db.head_revision()


def test_each_step_reversible_on_postgres(postgres_url):
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db.alembic_config("duckdb://"))
    previous = "base"
    for rev in [r.revision for r in reversed(list(script.walk_revisions()))]:
        assert db.upgrade(postgres_url, rev) == rev
        db.downgrade(postgres_url, previous)
        assert db.upgrade(postgres_url, rev) == rev
        previous = rev


def test_replicas_migrating_at_once_do_not_collide(postgres_url):
    """Two `serve` replicas starting together: the advisory lock lets one migrate; the other finds head."""
    results: list[object] = []
    barrier = threading.Barrier(3)

    def migrate() -> None:
        barrier.wait()
        try:
            results.append(db.upgrade(postgres_url))
        except Exception as exc:  # recorded: the assertion below names it
            results.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [db.head_revision()] * 3
