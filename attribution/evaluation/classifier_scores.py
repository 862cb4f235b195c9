"""Scoring the attribution classifier on labelled episodes: per-class precision/recall/F1, the confusion matrix,
macro-F1 over the four serving mechanisms, reason accuracy and a reliability table of the confidences.

Reason accuracy is reported two ways: ``reason_accuracy`` over the episodes whose label was right and has reasons
(is the sub-label right when the mechanism is), and ``reason_joint_accuracy`` over all episodes with a true reason
(label and reason both right).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from spanprism.attribution.classifier.reasons import pick_reason
from spanprism.attribution.vocabulary import CORE_LABELS

#: Confidence bins of the reliability table.
RELIABILITY_BINS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0001)


class LabelledEpisode(Protocol):
    features: Mapping[str, float]
    label: str
    reason: str | None
    family: str


class Classifies(Protocol):
    def classify(self, features: Mapping[str, float]) -> tuple[str, float, dict[str, float]]: ...


def _prf(y: list[str], pred: list[str], label: str) -> dict[str, float | int]:
    tp = sum(1 for a, b in zip(y, pred, strict=True) if a == label and b == label)
    support = sum(1 for a in y if a == label)
    predicted = sum(1 for b in pred if b == label)
    precision = tp / predicted if predicted else 0.0
    recall = tp / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "support": support,
        "predicted": predicted,
    }


def _reliability(conf: np.ndarray, correct: np.ndarray) -> list[dict[str, float | int]]:
    rows = []
    for lo, hi in itertools.pairwise(RELIABILITY_BINS):
        m = (conf >= lo) & (conf < hi)
        if np.any(m):
            rows.append(
                {
                    "bin": f"[{lo:.2f},{min(hi, 1.0):.2f})",
                    "n": int(m.sum()),
                    "mean_confidence": round(float(conf[m].mean()), 4),
                    "accuracy": round(float(correct[m].mean()), 4),
                }
            )
    return rows


def evaluate(model: Classifies, episodes: Sequence[LabelledEpisode], labels: Sequence[str]) -> dict:
    """All scores of ``model`` on ``episodes`` (``labels`` fixes the order of the table and the matrix)."""
    y = [e.label for e in episodes]
    answers = [model.classify(e.features) for e in episodes]
    pred = [a[0] for a in answers]
    conf = np.array([a[1] for a in answers], dtype=float)
    correct = np.array([a == b for a, b in zip(y, pred, strict=True)], dtype=bool)
    per_class = {lab: _prf(y, pred, lab) for lab in labels}
    matrix = [[sum(1 for a, b in zip(y, pred, strict=True) if a == t and b == p) for p in labels] for t in labels]
    with_reason = [(e, p) for e, p in zip(episodes, pred, strict=True) if e.reason is not None]
    right_label = [(e, p) for e, p in with_reason if p == e.label]
    reason_ok = [pick_reason(p, e.features) == e.reason for e, p in right_label]
    ece = sum(r["n"] * abs(r["mean_confidence"] - r["accuracy"]) for r in _reliability(conf, correct)) / max(len(y), 1)
    return {
        "n": len(y),
        "accuracy": round(float(correct.mean()), 4) if y else 0.0,
        "macro_f1_core": round(float(np.mean([per_class[c]["f1"] for c in CORE_LABELS if c in per_class])), 4),
        "per_class": per_class,
        "labels": list(labels),
        "confusion": matrix,
        "reason_accuracy": round(float(np.mean(reason_ok)), 4) if reason_ok else None,
        "reason_joint_accuracy": round(sum(reason_ok) / len(with_reason), 4) if with_reason else None,
        "reliability": _reliability(conf, correct),
        "expected_calibration_error": round(float(ece), 4),
        "per_family_accuracy": _per_family(episodes, pred),
    }


def _per_family(episodes: Sequence[LabelledEpisode], pred: list[str]) -> dict[str, float]:
    out: dict[str, list[bool]] = {}
    for e, p in zip(episodes, pred, strict=True):
        out.setdefault(e.family, []).append(p == e.label)
    return {k: round(float(np.mean(v)), 4) for k, v in sorted(out.items())}


def format_report(name: str, report: Mapping) -> str:
    """A plain-text table of one evaluation (for the CLI and the closing notes)."""
    labels = report["labels"]
    lines = [
        f"{name}: n={report['n']} accuracy={report['accuracy']:.3f} macro-F1(core)={report['macro_f1_core']:.3f} "
        f"reason acc={report['reason_accuracy']} (joint {report['reason_joint_accuracy']}) "
        f"ECE={report['expected_calibration_error']:.3f}",
        f"  {'label':<18}{'prec':>7}{'recall':>8}{'f1':>7}{'n':>6}",
    ]
    for lab in labels:
        r = report["per_class"][lab]
        lines.append(f"  {lab:<18}{r['precision']:>7.3f}{r['recall']:>8.3f}{r['f1']:>7.3f}{r['support']:>6}")
    lines.append("  confusion (rows true, cols predicted): " + " ".join(lab[:6] for lab in labels))
    lines += [
        f"  {lab:<18}" + "".join(f"{v:>7}" for v in row) for lab, row in zip(labels, report["confusion"], strict=True)
    ]
    return "\n".join(lines)
