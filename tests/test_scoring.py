"""Scoring regressions against injected labels: matching, misses, false alarms, per-class metrics."""

from __future__ import annotations

from datetime import UTC, datetime

from spanprism.attribution.evaluation.scoring import moved_pct, score

HORIZON = datetime(2026, 10, 5, tzinfo=UTC)


def _label(service: str, label: str, start: str, end: str, reason: str | None = None, moved: float = 0.5) -> dict:
    return {
        "series": {"service": service}, "label": label, "reason": reason, "start": start, "end": end,
        "expected_metrics": ["e2e_p95_ms"],
        "observed": {"before": {"e2e_p95_ms": 1000.0}, "during": {"e2e_p95_ms": 1000.0 * (1 + moved)}},
    }  # fmt: skip


def _reg(rid: str, service: str, label: str, start: str, end: str | None, reason: str | None = None) -> dict:
    return {"id": rid, "series": {"service": service}, "label": label, "reason": reason, "start": start, "end": end,
            "confidence": 0.8}  # fmt: skip


def test_matching_misses_and_false_alarms():
    labels = [
        _label("a", "cache_eviction", "2026-10-02T01:00:00Z", "2026-10-02T03:00:00Z", "prompt_changed"),
        _label("b", "prefill_growth", "2026-10-02T01:00:00Z", "2026-10-02T03:00:00Z", "user_input_growth"),
        _label("c", "routing_change", "2026-10-02T05:00:00Z", "2026-10-02T06:00:00Z", moved=0.05),
        _label("a", "none", "2026-10-03T01:00:00Z", "2026-10-03T02:00:00Z"),
    ]
    regs = [
        _reg("r1", "a", "cache_eviction", "2026-10-02T01:20:00Z", "2026-10-02T02:50:00Z", "prompt_changed"),
        _reg("r2", "b", "cache_eviction", "2026-10-02T03:10:00Z", None),  # within 30 min slack, open
        _reg("r3", "a", "unexplained", "2026-10-03T01:10:00Z", "2026-10-03T01:40:00Z"),  # in a benign window
        _reg("r4", "c", "routing_change", "2026-10-02T09:00:00Z", "2026-10-02T10:00:00Z"),  # too late: no match
    ]
    s = score(regs, labels, series_weeks=2.0, horizon=HORIZON)
    d = s.as_dict()
    assert (s.injected, s.detected, s.false_alarms) == (3, 2, 2)
    assert d["false_alarms_per_series_week"] == 1.0
    assert d["detection_recall_p95_moved_15pct"] == 1.0  # the only big episodes (a, b) were found; c moved 5 %
    assert s.confusion["cache_eviction"]["cache_eviction"] == 1
    assert s.confusion["prefill_growth"]["cache_eviction"] == 1
    assert s.confusion["routing_change"]["missed"] == 1
    per = s.per_class()
    assert per["cache_eviction"]["precision"] == 0.5 and per["cache_eviction"]["recall"] == 1.0
    assert per["prefill_growth"]["recall"] == 0.0
    assert d["reason_accuracy"] == 1.0


def test_moved_pct_uses_largest_expected_metric():
    lab = {"expected_metrics": ["ttft_p95_ms", "e2e_p95_ms"],
           "observed": {"before": {"ttft_p95_ms": 100.0, "e2e_p95_ms": 1000.0},
                        "during": {"ttft_p95_ms": 150.0, "e2e_p95_ms": 1100.0}}}  # fmt: skip
    assert round(moved_pct(lab), 6) == 50.0
    assert moved_pct({"expected_metrics": ["ttft_p95_ms"], "observed": {}}) is None
