"""Benchmark figures over several simulated runs: issue 11's target classes, per-family recall, pooling, open time.

Pure functions over :class:`~spanprism.attribution.evaluation.scoring.Score` objects, label dicts and regression
records; the benchmarks (``benchmarks/detection_eval.py``, ``evaluate.py``, ``generalization.py``) share them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spanprism.attribution.evaluation.scoring import Score, moved_pct
from spanprism.attribution.vocabulary import LABELS

#: Issue 11's main target class: the episode moved its p95 by >= 30 % for >= 2 h over >= 60 calls.
TARGET_MOVED_PCT = 30.0
TARGET_HOURS = 2.0
TARGET_CALLS = 60
#: The wider class: p95 moved >= 15 % (measured: episodes without calls to measure are left out).
WIDE_MOVED_PCT = 15.0


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def injected(labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The injected causes, in the order :func:`~.scoring.score` pairs them (``Score.pairs``)."""
    return [lab for lab in labels if lab["label"] != "none"]


def in_class(
    label: dict[str, Any], min_moved: float, *, min_hours: float = 0.0, min_calls: int = 0, unknown: bool = False
) -> bool:
    """Did ``label`` move its p95 by >= ``min_moved`` % for >= ``min_hours`` over >= ``min_calls`` calls?

    ``unknown`` decides episodes whose move the simulator could not measure (no calls before or during).
    """
    moved = moved_pct(label)
    if moved is None:
        return unknown
    calls = (label.get("observed") or {}).get("during", {}).get("calls", 0)
    hours = (_ts(label["end"]) - _ts(label["start"])) / 3600.0
    return moved >= min_moved and hours >= min_hours and calls >= min_calls


def class_recall(labels: list[dict[str, Any]], result: Score, **criteria: Any) -> tuple[int, int]:
    """(detected, injected) over the injected episodes :func:`in_class` ``criteria`` select."""
    det = inj = 0
    for label, pair in zip(injected(labels), result.pairs, strict=True):
        if in_class(label, **criteria):
            inj += 1
            det += pair["predicted"] is not None
    return det, inj


def target_recall(labels: list[dict[str, Any]], result: Score) -> tuple[int, int]:
    """(detected, injected) of the issue-11 target class: p95 moved ≥ 30 % for ≥ 2 h over ≥ 60 calls."""
    return class_recall(labels, result, min_moved=TARGET_MOVED_PCT, min_hours=TARGET_HOURS, min_calls=TARGET_CALLS)


def per_family(labels: list[dict[str, Any]], result: Score) -> dict[str, list[int]]:
    """family → [detected, injected, detected with p95 moved ≥ 15 %, injected with p95 moved ≥ 15 %]."""
    out: dict[str, list[int]] = {}
    for label, pair in zip(injected(labels), result.pairs, strict=True):
        row = out.setdefault(label["family"], [0, 0, 0, 0])
        hit = pair["predicted"] is not None
        big = in_class(label, WIDE_MOVED_PCT, unknown=True)
        row[0] += hit
        row[1] += 1
        row[2] += hit and big
        row[3] += big
    return out


def pool(scores: list[Score]) -> Score:
    """Sum several seeds' scores into one."""
    total = Score(confusion={lab: Counter() for lab in (*LABELS, "false_alarm")})
    for s in scores:
        for name in ("injected", "detected", "injected_big", "detected_big", "false_alarms", "reasons_right",
                     "reasons_total"):  # fmt: skip
            setattr(total, name, getattr(total, name) + getattr(s, name))
        total.series_weeks += s.series_weeks
        for truth, row in s.confusion.items():
            total.confusion.setdefault(truth, Counter()).update(row)
        total.pairs += s.pairs
        total.false_alarm_ids += s.false_alarm_ids
    return total


@dataclass(frozen=True)
class OpenTime:
    """How long episodes stayed open without a decision (resolved or accepted), and how long regressions spanned."""

    longest_hours: float  # longest episode from onset to its end (or the horizon while open)
    over_48h: int  # episodes open longer than 48 h
    still_open: int  # regressions open at the horizon
    longest_regression_hours: float  # a regression can chain several decided episodes of one series


def _hours(start: str, end: str | None, end_ts: float) -> float:
    return ((_ts(end) if end else end_ts) - _ts(start)) / 3600.0


def open_time(records: list[dict[str, Any]], horizon: datetime) -> OpenTime:
    """Longest time an episode stayed undecided: onset to its end (resolution or acceptance), or to ``horizon``
    while still open. Episodes are the records' ``metrics`` entries (``list_regressions(detail=True)``); a record
    without them counts as one episode."""
    end_ts = horizon.timestamp()
    episodes = [_hours(m["start"], m["end"], end_ts) for r in records for m in (r.get("metrics") or [r])]
    spans = [_hours(r["start"], r["end"], end_ts) for r in records]
    return OpenTime(
        longest_hours=round(max(episodes, default=0.0), 2),
        over_48h=sum(h > 48.0 for h in episodes),
        still_open=sum(1 for r in records if r["status"] == "open"),
        longest_regression_hours=round(max(spans, default=0.0), 2),
    )
