"""The attribution classifier: episode features → label, calibrated confidence, reason, evidence and exemplars.

Model: a multinomial logistic regression (scikit-learn) on standardized scale-free features
(:mod:`.features`), with a softmax temperature fitted on out-of-fold predictions so that a reported
confidence of 0.8 is right about 80% of the time. Below :attr:`LogisticModel.abstain_threshold` the answer is
``unexplained``: a regression none of the mechanisms accounts for is better left unexplained than confidently
mislabelled. The fitted model is plain numbers in JSON (no pickle): feature names, scaler, coefficients,
temperature, threshold, the scikit-learn version it was fitted with, a SHA-256 checksum of the content and a
self-test (stored feature vectors and the probabilities they must reproduce on load). Prediction is numpy only.

Usage::

    from spanprism.attribution.classifier.model import load_default
    res = load_default().attribute(baseline_calls, episode_calls, metric="e2e_p95_ms", context=EpisodeContext())
    res.to_record_fields()   # label, reason, confidence, contributions_ms, evidence, exemplars
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from spanprism.attribution.calls_window import window_of
from spanprism.attribution.classifier.exemplars import pick_exemplars, with_details
from spanprism.attribution.classifier.features import FEATURE_NAMES, EpisodeContext, episode_features, feature_vector
from spanprism.attribution.classifier.fit import fit_logistic
from spanprism.attribution.classifier.focus import focus, token_residuals
from spanprism.attribution.classifier.own_traffic import (
    backed,
    beyond_tokens,
    growth_confidence,
    own_traffic_label,
    token_sizes,
    unsupported_growth,
    within_tokens,
)
from spanprism.attribution.classifier.rate_checks import delay_label, mixed_label, route_unbacked
from spanprism.attribution.classifier.reasons import pick_reason
from spanprism.attribution.decomposition.decompose import decompose
from spanprism.attribution.vocabulary import LABELS

FORMAT = "spanprism.attribution-classifier/1"
VERSION = "classifier-v1"
DEFAULT_ARTIFACT = Path(__file__).parent / "artifacts" / f"{VERSION}.json"
#: Standardized features are clipped to ± this many standard deviations (fit and predict alike).
Z_CLIP = 5.0
#: Probabilities reproduced on load must match the stored ones to this tolerance.
SELF_TEST_TOL = 1e-9


class ArtifactError(ValueError):
    """The classifier artifact is corrupt, of another format, or does not reproduce its self-test."""


@dataclass
class LogisticModel:
    """Multinomial logistic regression on standardized features, with a softmax temperature and an abstain level."""

    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes, features)
    intercept: np.ndarray  # (classes,)
    temperature: float = 1.0
    abstain_threshold: float = 0.0
    clip: float = Z_CLIP

    def decision(self, X: np.ndarray) -> np.ndarray:
        # Standardized values are clipped: far outside the training range a linear weight only extrapolates.
        Z = np.clip((np.atleast_2d(np.asarray(X, dtype=float)) - self.mean) / self.scale, -self.clip, self.clip)
        return Z @ self.coef.T + self.intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, one row per feature row (columns in :attr:`classes` order)."""
        logits = self.decision(X) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> list[tuple[str, float]]:
        """(label, confidence) per row; the top class below the abstain threshold becomes ``unexplained``."""
        out = []
        for row in self.predict_proba(X):
            top = int(np.argmax(row))
            label = self.classes[top]
            if row[top] < self.abstain_threshold and "unexplained" in self.classes:
                label = "unexplained"
            out.append((label, float(row[self.classes.index(label)])))
        return out

    def best_allowed(self, probabilities: Mapping[str, float], barred: set[str]) -> tuple[str, float]:
        """(label, confidence) among the classes not in ``barred``: the top one, its probability renormalized over
        the allowed classes (the answer given that the barred ones are ruled out); ``unexplained`` below the abstain
        threshold or when nothing else is allowed."""
        allowed = {c: float(probabilities.get(c, 0.0)) for c in self.classes if c not in barred}
        total = sum(allowed.values())
        if not allowed or total <= 0:
            return "unexplained", 0.0
        label = max(allowed, key=lambda c: allowed[c])
        confidence = allowed[label] / total
        if confidence < self.abstain_threshold and "unexplained" in allowed:
            label = "unexplained"
            confidence = allowed[label] / total
        return label, confidence

    def to_json(self) -> dict:
        return {
            "kind": "multinomial_logistic_regression",
            "feature_names": list(self.feature_names),
            "classes": list(self.classes),
            "scaler": {"mean": _floats(self.mean), "scale": _floats(self.scale)},
            "coef": [_floats(row) for row in self.coef],
            "intercept": _floats(self.intercept),
            "temperature": _round(self.temperature),
            "abstain_threshold": _round(self.abstain_threshold),
            "clip": _round(self.clip),
        }

    @classmethod
    def from_json(cls, data: Mapping) -> LogisticModel:
        if data.get("kind") != "multinomial_logistic_regression":
            raise ArtifactError(f"unknown model kind {data.get('kind')!r}")
        return cls(
            feature_names=tuple(data["feature_names"]),
            classes=tuple(data["classes"]),
            mean=np.asarray(data["scaler"]["mean"], dtype=float),
            scale=np.asarray(data["scaler"]["scale"], dtype=float),
            coef=np.asarray(data["coef"], dtype=float),
            intercept=np.asarray(data["intercept"], dtype=float),
            temperature=float(data["temperature"]),
            abstain_threshold=float(data["abstain_threshold"]),
            clip=float(data["clip"]),
        )


def _round(x: float) -> float:
    # 12 significant digits: stable text across runs and platforms, far below any effect on a prediction.
    return float(f"{float(x):.12g}")


def _floats(a: np.ndarray) -> list[float]:
    return [_round(v) for v in np.asarray(a, dtype=float).ravel()]


@dataclass
class Attribution:
    """The classifier's answer for one episode."""

    label: str
    reason: str | None
    confidence: float
    probabilities: dict[str, float]
    contributions_ms: dict[str, float]
    evidence: list[dict[str, object]]
    exemplars: list[dict[str, str]]
    baseline: float = float("nan")  # the metric on the baseline window (ms)
    observed: float = float("nan")  # the metric on the episode window (ms)
    features: dict[str, float] = field(default_factory=dict)

    def to_record_fields(self) -> dict[str, object]:
        """Exactly the regression-record fields of DESIGN.md that attribution owns."""
        return {
            "label": self.label,
            "reason": self.reason,
            "confidence": round(self.confidence, 4),
            "contributions_ms": {k: round(float(v), 3) for k, v in self.contributions_ms.items()},
            "evidence": [dict(row) for row in self.evidence],
            "exemplars": [dict(x) for x in self.exemplars],
        }


class Attributor:
    """A fitted model plus what it needs to explain an episode end to end."""

    def __init__(self, model: LogisticModel, metadata: Mapping | None = None) -> None:
        if tuple(model.feature_names) != FEATURE_NAMES:
            raise ArtifactError("the model's feature list differs from attribution.classifier.features.FEATURE_NAMES")
        self.model = model
        self.metadata = dict(metadata or {})

    def classify(self, features: Mapping[str, float]) -> tuple[str, float, dict[str, float]]:
        """(label, confidence, probabilities) for one feature dict."""
        x = feature_vector(dict(features))
        probs = self.model.predict_proba(x)[0]
        label, confidence = self.model.predict(x)[0]
        return label, confidence, {c: round(float(p), 6) for c, p in zip(self.model.classes, probs, strict=True)}

    def attribute(
        self,
        baseline_calls: pa.Table,
        episode_calls: pa.Table,
        *,
        metric: str = "e2e_p95_ms",
        context: EpisodeContext | None = None,
        seed: int = 0,
        narrow: bool = True,
    ) -> Attribution:
        """Decompose, featurize, classify (growth of the series' own token sizes overrides a mechanism that carries
        less, and a growth label for sizes that did not grow for the calls behind them gives way to the next answer
        backed by a slowdown of its own, see :mod:`.own_traffic`; a routing answer without a decode change, a
        contention answer against the call-to-call decode speed and a contention/unexplained answer against the fixed
        delay's spread are checked, see :mod:`.rate_checks`); then
        the reason, evidence rows and exemplars.

        Each window's rows become one :class:`CallWindow`, which every step reads. An episode window wider than its
        change is first narrowed to the run of calls that carries it (:mod:`.focus`, said in the evidence)."""
        base, epi = window_of(baseline_calls), window_of(episode_calls)
        focus_rows: list[dict[str, object]] = []
        residuals = token_residuals(base, epi, metric)
        focused = focus(residuals, epi) if narrow else None
        rows = slice(None)
        if focused is not None:
            focus_rows.append(focused.evidence(float(epi.start_s[focused.first]), float(epi.start_s[focused.last])))
            rows = slice(focused.first, focused.last + 1)
            epi = epi.take(np.arange(focused.first, focused.last + 1))
        beyond, within = beyond_tokens(residuals, rows), within_tokens(residuals, rows)
        decomposition = decompose(base, epi, metric=metric, seed=seed)
        feats = episode_features(decomposition, base, epi, context)
        label, confidence, probs = self.classify(feats)
        sizes = token_sizes(base, epi, metric)
        # A growth label for sizes that did not grow (for the calls behind them) is the features' guess, not the
        # series' traffic: the classifier's best answer among the labels the token sizes allow.
        barred = unsupported_growth(decomposition, sizes, within=within)
        # A route move the spans do not record still shows in the decode rate of the calls it serves (other
        # hardware or weights): without it, a routing answer is the features' guess (:mod:`.rate_checks`).
        if route_unbacked(feats):
            barred = barred | {"routing_change"}
        if label in barred:
            label, confidence = self.model.best_allowed(probs, barred)
            if not backed(label, decomposition, beyond_tokens=beyond):
                label, confidence = "unexplained", float(probs.get("unexplained", 0.0))
        # Contention slows neighbouring calls alike; two decode speeds in turn are a share moved to another backend.
        mixed = mixed_label(label, feats)
        if mixed != label and mixed not in barred:
            pair = float(probs.get("batch_contention", 0.0)) + float(probs.get(mixed, 0.0))
            label, confidence = mixed, float(probs.get(mixed, 0.0)) / pair if pair > 0 else 0.5
        # The series' own longer prompts/outputs are a cause of their own, never a provider mechanism.
        grown_label, growth_rows = own_traffic_label(label, decomposition, sizes, beyond_tokens=beyond, within=within)
        if grown_label != label:
            label, confidence = grown_label, growth_confidence(probs, grown_label, decomposition)
        # Without TTFT, a fixed delay per call is a queue when its wait varies, a client-side hook when it does not.
        delayed = delay_label(label, feats)
        if delayed != label:
            pair = float(probs.get("batch_contention", 0.0)) + float(probs.get("unexplained", 0.0))
            label, confidence = delayed, float(probs.get(delayed, 0.0)) / pair if pair > 0 else 0.5
        reason = pick_reason(label, feats)
        evidence = [dict(row) for row in decomposition.evidence] + growth_rows + focus_rows
        evidence += [
            {"signal": f"feature:{k}", "baseline": None, "observed": round(v, 6)}
            for k, v in feats.items()
            if k in _EVIDENCE_FEATURES
        ]
        # Say which route dimensions the spans never record: a move along them cannot show in the route mix.
        evidence += [
            {"signal": f"route_{k}", "baseline": None, "observed": None}
            for k, v in feats.items()
            if k.startswith("unrecorded_") and v >= 0.5
        ]
        return Attribution(
            label=label,
            reason=reason,
            confidence=confidence,
            probabilities=probs,
            contributions_ms=dict(decomposition.contributions_ms),
            evidence=evidence,
            exemplars=with_details(episode_calls, pick_exemplars(epi, metric=metric)),
            baseline=decomposition.baseline_value,
            observed=decomposition.observed_value,
            features=feats,
        )

    # -- persistence -------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The artifact content, checksum included (keys sorted when written)."""
        probe = _probe_vectors(self.model)
        body = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model.to_json(),
            "metadata": self.metadata,
            "self_test": {
                "features": [_floats(v) for v in probe],
                "probabilities": [_floats(p) for p in self.model.predict_proba(probe)],
            },
        }
        return {**body, "checksum": _checksum(body)}

    @classmethod
    def from_json(cls, data: Mapping) -> Attributor:
        """Load and verify (format, version, checksum, feature list, self-test)."""
        body = {k: v for k, v in data.items() if k != "checksum"}
        if data.get("format") != FORMAT:
            raise ArtifactError(f"not a {FORMAT} artifact: {data.get('format')!r}")
        if data.get("checksum") != _checksum(body):
            raise ArtifactError("checksum mismatch: the artifact was modified or truncated")
        att = cls(LogisticModel.from_json(data["model"]), data.get("metadata"))
        test = data["self_test"]
        got = att.model.predict_proba(np.asarray(test["features"], dtype=float))
        if not np.allclose(got, np.asarray(test["probabilities"]), atol=SELF_TEST_TOL, rtol=0):
            raise ArtifactError("the loaded model does not reproduce its self-test probabilities")
        return att

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, indent=1, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.dumps(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Attributor:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


#: Features worth showing a reader next to the decomposition's own evidence rows.
_EVIDENCE_FEATURES = frozenset(
    {
        "hit_rate_change",
        "miss_on_grown_routes",
        "new_prompt_key_share",
        "gap_5m_change",
        "tv_max",
        "peer_regressed_share",
        "log_volume_ratio",
        "output_elasticity",
        "itl_split_change",
        "itl_jump_change",
        "itl_low_shift",
        "log_net_rate_ratio",
        "fixed_tail_shift_rel",
        "host_intercept_shift_ms",
        "input_growth_taper",
    }
)


def _checksum(body: Mapping) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _probe_vectors(model: LogisticModel) -> np.ndarray:
    """Feature rows that exercise every coefficient: the scaler mean and ± 1.5 standard deviations of it."""
    base = model.mean
    return np.vstack([base, base + 1.5 * model.scale, base - 1.5 * model.scale])


def fit_attributor(
    features: Sequence[Mapping[str, float]],
    labels: Sequence[str],
    *,
    seed: int = 0,
    metadata: Mapping | None = None,
) -> Attributor:
    """Fit a :class:`LogisticModel` on feature dicts and labels (see ``classifier_fit.py``)."""
    X = np.vstack([feature_vector(dict(f)) for f in features])
    fitted = fit_logistic(X, list(labels), LABELS, seed=seed, clip=Z_CLIP)
    model = LogisticModel(FEATURE_NAMES, LABELS, **fitted.params)
    return Attributor(model, {**dict(metadata or {}), **fitted.report})


def load_default(path: str | Path | None = None) -> Attributor:
    """The shipped model (``attribution/classifier/artifacts/classifier-v1.json``), verified on load."""
    return Attributor.load(path or DEFAULT_ARTIFACT)
