"""Every migration walks up, down and up again, and the result matches the SQLAlchemy tables."""

from __future__ import annotations

import duckdb
import pytest

from spanprism.api.storage import connect as db
from spanprism.models import tables
from spanprism.models.schema import LLM_CALLS_SCHEMA


def _columns(path, table: str) -> list[str]:
    con = duckdb.connect(str(path))
    try:
        return [r[0] for r in con.sql(f"DESCRIBE {table}").fetchall()]
    finally:
        con.close()


def _tables(path) -> set[str]:
    con = duckdb.connect(str(path))
    try:
        return {r[0] for r in con.sql("SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()


def test_up_down_up(tmp_path):
    path = tmp_path / "m.duckdb"
    assert db.upgrade(path) == db.head_revision()
    assert db.downgrade(path, "base") is None
    assert _tables(path) == {"alembic_version"}
    assert db.upgrade(path) == db.head_revision()


def test_each_step_reversible(tmp_path):
    from alembic.script import ScriptDirectory

    path = tmp_path / "s.duckdb"
    script = ScriptDirectory.from_config(db.alembic_config("duckdb://"))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    previous = "base"
    for rev in revisions:
        assert db.upgrade(path, rev) == rev
        db.downgrade(path, previous)
        assert db.upgrade(path, rev) == rev
        previous = rev


def test_migrated_schema_matches_models(tmp_path):
    path = tmp_path / "t.duckdb"
    db.upgrade(path)
    for table in tables.metadata.sorted_tables:
        assert _columns(path, table.name) == [c.name for c in table.columns], table.name
    assert _columns(path, "llm_calls") == LLM_CALLS_SCHEMA.names


def test_open_db_upgrades_on_first_use(tmp_path):
    con = db.open_db(tmp_path / "new.duckdb")
    try:
        assert con.execute("SELECT count(*) FROM llm_calls").fetchone() == (0,)
    finally:
        con.close()


def test_memory_db_is_refused():
    with pytest.raises(ValueError):
        db.open_db(":memory:")


@pytest.mark.parametrize("upgraded", [False, True])
def test_db_current_in_a_fresh_process(tmp_path, upgraded):
    """`spanprism db current` runs no migration, so Alembic's duckdb dialect must be known without env.py."""
    import subprocess
    import sys

    path = tmp_path / "c.duckdb"
    if upgraded:
        db.upgrade(path)
    proc = subprocess.run(
        [sys.executable, "-m", "spanprism.api.cli", "--db", str(path), "db", "current"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (db.head_revision() in proc.stdout) is upgraded
