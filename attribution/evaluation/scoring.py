"""Scoring detected regressions against injected ground truth (``labels.jsonl`` of the simulator).

Pure: regression records (DESIGN.md dicts) and label dicts in, metrics out. A regression matches a label when
it is on the same service and their time ranges overlap (with ``slack`` on both sides, since detection onsets
are bucketed). A regression that matches no injected episode — or only a benign (``none``) window — is a false
alarm. Labels are scored per class (precision/recall/F1 over matched pairs plus misses), with a confusion matrix
whose extra ``missed`` column counts undetected episodes and extra ``false_alarm`` row counts false alarms.

Own-size changes (``kind = "own_size_change"`` labels: a >= 25 % step of the series' own prompt or output size)
are no injected cause: they stay out of recall and the confusion matrix, but a false alarm that overlaps one is
explained (:func:`score_own_size`), and right when labelled as the step's ``expected_label``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from spanprism.attribution.vocabulary import CORE_LABELS, LABELS


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Score:
    """Everything `spanprism evaluate` reports."""

    injected: int = 0
    detected: int = 0
    injected_big: int = 0  # episodes whose p95 moved ≥ 15 % (as the simulator measured it)
    detected_big: int = 0
    false_alarms: int = 0
    series_weeks: float = 0.0
    confusion: dict[str, Counter[str]] = field(default_factory=dict)  # truth -> predicted
    reasons_right: int = 0
    reasons_total: int = 0
    pairs: list[dict[str, Any]] = field(default_factory=list)
    false_alarm_ids: list[str] = field(default_factory=list)  # regressions that matched no injected episode

    def per_class(self) -> dict[str, dict[str, float]]:
        """Labelling quality on detected episodes: precision, recall, F1 and support per label.

        Misses and false alarms are detection errors, reported separately (``detection_recall``,
        ``false_alarms_per_series_week``); here only matched episodes count.
        """
        out: dict[str, dict[str, float]] = {}
        for label in LABELS:
            tp = self.confusion.get(label, Counter())[label]
            predicted = sum(self.confusion.get(truth, Counter())[label] for truth in LABELS)
            support = sum(self.confusion.get(label, Counter())[pred] for pred in LABELS)
            p = tp / predicted if predicted else 0.0
            r = tp / support if support else 0.0
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            out[label] = {"precision": p, "recall": r, "f1": f1, "support": support, "predicted": predicted}
        return out

    def macro_f1(self, labels: tuple[str, ...] = CORE_LABELS) -> float:
        scores = self.per_class()
        present = [lab for lab in labels if scores[lab]["support"]]
        return sum(scores[lab]["f1"] for lab in present) / len(present) if present else 0.0

    def label_accuracy_on_detected(self) -> float:
        """Share of detected episodes whose label is right (misses excluded)."""
        right = sum(self.confusion.get(lab, Counter())[lab] for lab in LABELS)
        return right / self.detected if self.detected else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "injected": self.injected,
            "detected": self.detected,
            "detection_recall": self.detected / self.injected if self.injected else 0.0,
            "detection_recall_p95_moved_15pct": self.detected_big / self.injected_big if self.injected_big else 0.0,
            "false_alarms": self.false_alarms,
            "false_alarms_per_series_week": self.false_alarms / self.series_weeks if self.series_weeks else 0.0,
            "macro_f1_core": self.macro_f1(),
            "label_accuracy_on_detected": self.label_accuracy_on_detected(),
            "reason_accuracy": self.reasons_right / self.reasons_total if self.reasons_total else 0.0,
            "per_class": self.per_class(),
            "confusion": {k: dict(v) for k, v in self.confusion.items()},
        }


def _overlaps(reg: dict[str, Any], label: dict[str, Any], slack: timedelta, horizon: datetime) -> bool:
    start, end = _t(reg["start"]), _t(reg["end"]) if reg["end"] else horizon
    return start < _t(label["end"]) + slack and end > _t(label["start"]) - slack


def moved_pct(label: dict[str, Any]) -> float | None:
    """How much the episode moved its expected metric's p95, as the simulator measured it (None if unknown)."""
    obs = label.get("observed") or {}
    best = None
    for metric in label.get("expected_metrics") or ["e2e_p95_ms"]:
        before, during = (obs.get("before") or {}).get(metric), (obs.get("during") or {}).get(metric)
        if before and during:
            change = (during / before - 1) * 100
            best = change if best is None else max(best, change)
    return best


def score(
    regressions: list[dict[str, Any]],
    labels: list[dict[str, Any]],
    *,
    series_weeks: float,
    horizon: datetime,
    slack: timedelta = timedelta(minutes=30),
) -> Score:
    """Match regressions to injected labels and count everything."""
    result = Score(series_weeks=series_weeks, confusion={lab: Counter() for lab in LABELS})
    used: set[str] = set()
    for label in labels:
        if label["label"] == "none":
            continue
        result.injected += 1
        moved = moved_pct(label)
        big = moved is None or moved >= 15.0
        result.injected_big += int(big)
        service = label["series"]["service"]
        hits = [r for r in regressions if r["series"]["service"] == service and _overlaps(r, label, slack, horizon)]
        if not hits:
            result.confusion[label["label"]]["missed"] += 1
            result.pairs.append({"truth": label["label"], "family": label.get("family"), "predicted": None})
            continue
        best = max(hits, key=lambda r: r["confidence"])
        used.update(r["id"] for r in hits)
        result.detected += 1
        result.detected_big += int(big)
        result.confusion[label["label"]][best["label"]] += 1
        if best["label"] == label["label"] and label.get("reason"):
            result.reasons_total += 1
            result.reasons_right += int(best["reason"] == label["reason"])
        result.pairs.append({
            "truth": label["label"], "family": label.get("family"), "predicted": best["label"],
            "reason": best["reason"], "true_reason": label.get("reason"), "id": best["id"],
        })  # fmt: skip
    result.false_alarm_ids = [r["id"] for r in regressions if r["id"] not in used]
    result.false_alarms = len(result.false_alarm_ids)
    result.confusion.setdefault("false_alarm", Counter())
    for r in regressions:
        if r["id"] not in used:
            result.confusion["false_alarm"][r["label"]] += 1
    return result


#: A step of the series' own token size this large (relative) explains a report (issue 11).
OWN_SIZE_CHANGE = 0.25
#: Own-size steps are persistent: a report may start this long after the labelled window and still be theirs
#: (at a few calls an hour a change point needs hours of calls).
OWN_SIZE_SLACK = timedelta(hours=3)


def own_size_changes(labels: list[dict[str, Any]], min_change: float = OWN_SIZE_CHANGE) -> list[dict[str, Any]]:
    """The own-size change labels whose relative change is at least ``min_change`` either way."""
    return [lab for lab in labels if lab.get("kind") == "own_size_change" and abs(float(lab["change"])) >= min_change]


@dataclass
class OwnSizeScore:
    """False alarms split into those an own-size change explains and the rest (unexplained noise)."""

    explained: int = 0  # false alarms overlapping a >= 25 % own-size change
    explained_right: int = 0  # ... labelled as that change's expected label (prefill_growth / output_growth)
    unexplained: int = 0  # matching no cause and no own-size change
    changes: int = 0  # own-size changes in the labels
    changes_reported: int = 0  # ... overlapped by at least one report
    unexplained_ids: list[str] = field(default_factory=list)

    def add(self, other: OwnSizeScore) -> None:
        """Accumulate another seed's counts."""
        for name in ("explained", "explained_right", "unexplained", "changes", "changes_reported"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unexplained_ids += other.unexplained_ids


def _own_overlap(reg: dict[str, Any], change: dict[str, Any], slack: timedelta, horizon: datetime) -> bool:
    start, end = _t(reg["start"]), _t(reg["end"]) if reg["end"] else horizon
    return start < _t(change["end"]) + OWN_SIZE_SLACK and end > _t(change["start"]) - slack


def score_own_size(
    regressions: list[dict[str, Any]],
    labels: list[dict[str, Any]],
    false_alarm_ids: list[str],
    *,
    horizon: datetime,
    slack: timedelta = timedelta(minutes=30),
) -> OwnSizeScore:
    """Which false alarms (``Score.false_alarm_ids``) an own-size change of their series explains.

    A report is explained when it is on the change's service and overlaps [start - slack, end + 3 h]; it is right
    when its label is the change's ``expected_label`` (for several overlapping changes: any of theirs).
    """
    changes = own_size_changes(labels)
    out = OwnSizeScore(changes=len(changes))
    alarms = set(false_alarm_ids)
    reported: set[str] = set()
    for reg in regressions:
        if reg["id"] not in alarms:
            continue
        hits = [
            c
            for c in changes
            if c["series"]["service"] == reg["series"]["service"] and _own_overlap(reg, c, slack, horizon)
        ]
        if not hits:
            out.unexplained += 1
            out.unexplained_ids.append(reg["id"])
            continue
        out.explained += 1
        out.explained_right += int(reg["label"] in {c["expected_label"] for c in hits})
        reported.update(c["episode_id"] for c in hits)
    out.changes_reported = len(reported)
    return out
