"""A small simulated world (exports ingested and attributed) served by a live app, for read-API tests."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import live_server

from spanprism.api.cli import main

#: The simulated world ends 2026-10-03 12:00 UTC; health and panels are read as of this hour.
AT = datetime(2026, 10, 3, 9, tzinfo=UTC)


def build_world(base: Path) -> Path:
    """A DuckDB file with calls, rollups, baselines and attributed regressions (built once per session)."""
    db = base / "world" / "world.duckdb"
    if db.exists():
        return db
    db.parent.mkdir(parents=True)
    sim = db.parent / "sim"
    args = ["--db", str(db), "simulate", "--out", str(sim), "--seed", "31", "--days", "2.5", "--series", "3",
            "--rate-min", "0.1", "--rate-max", "0.2"]  # fmt: skip
    assert main(args) == 0
    assert main(["--db", str(db), "ingest", str(sim)]) == 0
    assert main(["--db", str(db), "attribute"]) == 0
    return db


def serve_world(tmp_path_factory: pytest.TempPathFactory, name: str, services: list | None = None,
                **overrides: object):  # fmt: skip
    """A live server (no background services unless given) over a fresh copy of the world file."""
    world = build_world(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp(name)
    shutil.copy(world, root / "server.duckdb")
    return live_server(root, services=services or [], **overrides)
