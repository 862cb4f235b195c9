"""Episode lifecycle: a shift that persists is accepted (re-baselined) within 48 h, and a later shift is its own."""

from __future__ import annotations

import numpy as np

from spanprism.attribution.detection.episodes import FAMILIES, DetectionConfig, FamilyPanel, detect_family
from spanprism.attribution.store.records import group_regressions

DAY = 288
START_S = 1_772_409_600  # 2026-03-02 00:00 UTC


def _panel(days: int, steps: list[tuple[int, float]], *, calls: float = 100.0, seed: int = 3) -> FamilyPanel:
    """One series of bucket statistics whose level multiplies by ``factor`` from each ``(bucket, factor)`` on."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    n = rng.poisson(calls, size=(1, len(t))).astype(float)
    level = np.full((1, len(t)), np.log(900.0))
    for col, factor in steps:
        level[:, col:] += np.log(factor)
    sd = 0.5 / np.sqrt(n)
    stats = {stat: level + off + k * sd * rng.standard_normal(n.shape)
             for stat, off, k in zip(FAMILIES["e2e"], (0.82, 0.0, -0.1), (2.1, 1.25, 1.0), strict=True)}  # fmt: skip
    return FamilyPanel("e2e", 300, ("s0",), START_S, stats, n)


def test_persisting_shift_is_accepted_within_48_hours_and_a_later_shift_is_its_own():
    first, second = 8 * DAY + 150, 14 * DAY + 100
    panel = _panel(16, [(first, 1.4), (second, 1.5)])
    episodes, _ = detect_family(panel, DetectionConfig(), eval_from_col=DAY)
    assert [e.status for e in episodes] == ["accepted", "open"]
    accepted, later = episodes
    assert abs((accepted.start.timestamp() - START_S) // 300 - first) <= 2
    assert (accepted.end - accepted.start).total_seconds() <= 48 * 3600
    assert abs((later.start.timestamp() - START_S) // 300 - second) <= 2
    # Against the re-learned baseline the second step is its own +50 %, not +110 % against the old level.
    assert 35 < later.change_pct < 65


def test_accepted_status_reaches_the_regression_record():
    panel = _panel(12, [(8 * DAY + 150, 1.4)])
    episodes, _ = detect_family(panel, DetectionConfig(), eval_from_col=DAY)
    rows = group_regressions(episodes, {}, merge_gap_s=1800, now=panel.when(0))
    assert [r["status"] for r in rows] == ["accepted"]
    assert rows[0]["end_time"] is not None


def test_without_a_settle_period_the_shift_stays_open():
    panel = _panel(12, [(8 * DAY + 150, 1.4)])
    config = DetectionConfig(accept_after_s=100 * 86400)
    episodes, _ = detect_family(panel, config, eval_from_col=DAY)
    assert [e.status for e in episodes] == ["open"]
