"""Regression records: only regressions whose reported metric really rose are shown."""

from __future__ import annotations

from datetime import UTC, datetime

from spanprism.api.storage.connect import open_db
from spanprism.attribution.store.records import list_regressions


def _insert(con, rid: str, change: float | None) -> None:
    now = datetime(2026, 10, 2, tzinfo=UTC)
    con.execute(
        "INSERT INTO regressions (id, series_key, service, provider, request_model, operation, tenant, start_time,"
        " detected_at, end_time, status, metric, baseline, observed, change_pct, metrics, updated_at)"
        " VALUES (?, 'k', 'svc', 'openai', 'gpt-4o', 'chat', NULL, ?, ?, NULL, 'open', 'e2e_p95_ms', 1000, ?, ?,"
        " '[]', ?)",
        [rid, now, now, None if change is None else 1000 * (1 + change / 100), change, now],
    )


def test_sub_threshold_regressions_are_not_reported(tmp_path):
    con = open_db(tmp_path / "r.duckdb")
    try:
        _insert(con, "big", 35.0)
        _insert(con, "flat", 1.5)  # opened on the geometric mean, p50/p95 barely moved
        _insert(con, "unknown", None)
        ids = [r["id"] for r in list_regressions(con)]
        assert ids == ["big"]
        assert {r["id"] for r in list_regressions(con, min_change_pct=0.0)} == {"big", "flat"}
        record = list_regressions(con)[0]
        assert record["label"] == "unexplained" and record["contributions_ms"] == {}  # not attributed yet
    finally:
        con.close()
