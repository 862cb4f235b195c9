"""Detection results in the shared state database: with ``SPANPRISM_STATE_URL`` the baselines, episodes,
regressions, attributions and feedback live in PostgreSQL, and every ``serve`` replica lists the same regressions.

One small simulated export (``small_export``, simulated once per session and shared with the worker tests) goes
through ``spanprism ingest`` + ``attribute`` twice: into a DuckDB file alone, and into another file with a real
PostgreSQL state database (the ``postgres_server`` fixture). The regression records (every field, labels included)
must be the same; the second file must hold none of them; a replica with an empty DuckDB file of its own, sharing
the state database, must serve them over HTTP and take feedback on them.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from conftest import live_server
from sqlalchemy import create_engine

from spanprism.api.cli import main
from spanprism.api.storage.database import Database
from spanprism.attribution.passes.label_pass import find_regression
from spanprism.attribution.store.records import list_regressions

pytestmark = pytest.mark.postgres


def _duck_records(path: Path) -> list[dict]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return list_regressions(con, detail=True)
    finally:
        con.close()


def test_results_live_in_postgres_and_every_replica_serves_them(small_export, tmp_path, postgres_url, monkeypatch):
    export = small_export
    alone, shared = tmp_path / "alone.duckdb", tmp_path / "shared.duckdb"
    for args in (["ingest", str(export)], ["attribute"]):
        assert main(["--db", str(alone), *args]) == 0
    expected = _duck_records(alone)
    assert len(expected) >= 2 and any(r["label"] != "unexplained" for r in expected)

    monkeypatch.setenv("SPANPRISM_STATE_URL", postgres_url)
    for args in (["ingest", str(export)], ["attribute"]):
        assert main(["--db", str(shared), *args]) == 0
    monkeypatch.delenv("SPANPRISM_STATE_URL")

    # The results went to PostgreSQL, none to the file that holds the calls and rollups.
    con = duckdb.connect(str(shared), read_only=True)
    try:
        for table in ("regressions", "episodes", "baselines", "regression_attributions"):
            assert con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] == 0, table
        assert con.execute("SELECT count(*) FROM series_rollups").fetchall()[0][0] > 0
    finally:
        con.close()
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as pg:
            counts = {t: pg.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                      for t in ("regressions", "episodes", "baselines", "regression_attributions")}  # fmt: skip
    finally:
        engine.dispose()
    assert all(n > 0 for n in counts.values()), counts

    # Every field of every record is the same as on DuckDB alone (ids, times, labels, contributions, evidence).
    db = Database(tmp_path / "reader.duckdb", state_url=postgres_url)
    try:
        with db.state.read() as cur:
            assert list_regressions(cur, detail=True) == expected
    finally:
        db.close()

    # A replica with an empty DuckDB file of its own serves them, and takes feedback another process then reads.
    first = expected[0]["id"]
    with live_server(tmp_path / "replica", services=[], state_url=postgres_url) as replica:
        listed = replica.client.get("/api/v1/regressions").json()
        assert [r["id"] for r in listed["data"]] == [r["id"] for r in expected]
        assert replica.client.get(f"/api/v1/regressions/{first[:10]}").json()["label"] == expected[0]["label"]
        posted = replica.client.post(f"/api/v1/regressions/{first}/feedback",
                                     json={"label": "routing_change", "note": "post-mortem"})  # fmt: skip
        assert posted.status_code == 201, posted.text
    other = Database(tmp_path / "other.duckdb", state_url=postgres_url)
    try:
        with other.state.read() as cur:
            assert [f["label"] for f in find_regression(cur, first)["feedback"]] == ["routing_change"]
    finally:
        other.close()
