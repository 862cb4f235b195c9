"""Regression records: only regressions whose reported metric really rose are shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from spanprism.api.storage.connect import open_db
from spanprism.attribution.detection.episodes import Episode
from spanprism.attribution.store.records import _group, list_regressions

T0 = datetime(2026, 10, 2, 9, tzinfo=UTC)


def _episode(family: str, start_h: float, end_h: float | None, key: str = "k") -> Episode:
    start = T0 + timedelta(hours=start_h)
    return Episode(id=f"{family}{start_h}", series_key=key, family=family, metric=f"{family}_p95_ms", grain_s=0,
                   start=start, detected_at=start, peak_time=start,
                   end=None if end_h is None else T0 + timedelta(hours=end_h), baseline=1.0, observed=1.5,
                   change_pct=50.0, peak_change_pct=50.0, n_buckets=10)  # fmt: skip


def _families(groups: list[list[Episode]]) -> list[list[str]]:
    return [[e.family for e in g] for g in groups]


def test_one_cause_moving_several_families_is_one_regression():
    groups = _group([_episode("ttft", 0, 3), _episode("e2e", 0.5, 3.5), _episode("itl", 3.2, 4)], gap_s=1800)
    assert _families(groups) == [["ttft", "e2e", "itl"]]  # overlapping episodes, whatever their family


def test_chained_causes_of_different_families_are_regressions_of_their_own():
    # TTFT moved (a routing change) and came back; 20 minutes later inter-token latency moved (contention).
    groups = _group([_episode("ttft", 0, 3), _episode("itl", 3 + 1 / 3, 6)], gap_s=1800)
    assert _families(groups) == [["ttft"], ["itl"]]
    # The same family back within the gap is the same regression flickering.
    groups = _group([_episode("ttft", 0, 3), _episode("ttft", 3 + 1 / 3, 6)], gap_s=1800)
    assert _families(groups) == [["ttft", "ttft"]]
    # And a later episode past the gap is its own regression, as before.
    assert len(_group([_episode("ttft", 0, 3), _episode("ttft", 4, 6)], gap_s=1800)) == 2


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
