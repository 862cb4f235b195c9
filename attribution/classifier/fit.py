"""Fitting the attribution classifier: scaler, regularization by cross-validation, temperature and abstain level.

1. Standardize every feature (mean / standard deviation of the training rows; a constant feature keeps scale 1)
   and clip to ± ``clip`` standard deviations.
2. Choose the L2 strength ``C`` of a multinomial logistic regression (balanced class weights: the simulator's
   family mix is not the world's) by out-of-fold log-loss over a small grid, stratified 5-fold, seeded.
3. Fit a softmax temperature on the out-of-fold logits (minimum negative log-likelihood): logistic regression is
   usually close to calibrated, the temperature fixes what regularization shrank or over-sharpened.
4. Pick the abstain threshold on the calibrated out-of-fold probabilities: the level below which answering
   ``unexplained`` maximizes the macro-F1 over all labels (ties → the lower threshold).
Everything is deterministic in the data and ``seed`` (BLAS runs single-threaded during the fit).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import sklearn
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

C_GRID: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
THRESHOLD_GRID: tuple[float, ...] = tuple(np.round(np.arange(0.0, 0.71, 0.05), 2))
FOLDS = 5
#: Intercept of a class with no training example: never predicted.
ABSENT_LOGIT = -30.0


@dataclass
class FitResult:
    """Model parameters (for :class:`~attribution.classifier.model.LogisticModel`) and a report for the metadata."""

    params: dict
    report: dict


def _full_logits(model: LogisticRegression, Z: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Decision values over all ``classes`` (a class the model never saw gets :data:`ABSENT_LOGIT`)."""
    coef, intercept = _full_params(model, Z.shape[1], classes)
    return Z @ coef.T + intercept


def _full_params(model: LogisticRegression, d: int, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    coef, intercept = np.zeros((len(classes), d)), np.full(len(classes), ABSENT_LOGIT)
    seen = list(model.classes_)
    if len(seen) == 2:  # binary problems come back as one row: expand to the symmetric softmax form
        rows = {seen[0]: -0.5 * model.coef_[0], seen[1]: 0.5 * model.coef_[0]}
        icpt = {seen[0]: -0.5 * model.intercept_[0], seen[1]: 0.5 * model.intercept_[0]}
    else:
        rows = dict(zip(seen, model.coef_, strict=True))
        icpt = dict(zip(seen, model.intercept_, strict=True))
    for i, c in enumerate(classes):
        if c in rows:
            coef[i], intercept[i] = rows[c], icpt[c]
    return coef, intercept


def _lr(C: float) -> LogisticRegression:
    return LogisticRegression(C=C, class_weight="balanced", max_iter=5000, tol=1e-8)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, y_idx: np.ndarray, temperature: float) -> float:
    p = _softmax(logits, temperature)[np.arange(y_idx.size), y_idx]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def _oof_logits(Z: np.ndarray, y: np.ndarray, classes: tuple[str, ...], C: float, seed: int) -> np.ndarray:
    counts = np.unique(y, return_counts=True)[1]
    folds = int(min(FOLDS, counts.min())) if counts.size > 1 else 0
    out = np.zeros((y.size, len(classes)))
    if folds < 2:
        return _full_logits(_lr(C).fit(Z, y), Z, classes)
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(Z, y):
        if np.unique(y[tr]).size < 2:
            continue
        out[te] = _full_logits(_lr(C).fit(Z[tr], y[tr]), Z[te], classes)
    return out


def _threshold(probs: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> tuple[float, float]:
    """(abstain threshold, its out-of-fold macro-F1)."""
    best = (0.0, -1.0)
    top = probs.argmax(axis=1)
    for t in THRESHOLD_GRID:
        pred = np.where(probs.max(axis=1) < t, "unexplained", np.asarray(classes, dtype=object)[top])
        score = float(f1_score(y, pred, labels=sorted(set(y)), average="macro", zero_division=0))
        if score > best[1] + 1e-12:
            best = (float(t), score)
    return best


def fit_logistic(
    X: np.ndarray, labels: list[str], classes: tuple[str, ...], *, seed: int = 0, clip: float = 5.0
) -> FitResult:
    """Fit scaler, C, coefficients, temperature and abstain threshold (module docstring)."""
    y = np.asarray(labels, dtype=object)
    unknown = sorted(set(labels) - set(classes))
    if unknown or len(set(labels)) < 2:
        raise ValueError(f"need >= 2 known labels; unknown: {unknown}")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    Z = np.clip((X - mean) / scale, -clip, clip)
    y_idx = np.array([classes.index(v) for v in y])
    # One BLAS thread: a multi-threaded reduction sums in a varying order, and L-BFGS amplifies those last-bit
    # differences into different coefficients; the artifact must be byte-identical from the same seeds.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds; the grid picks a well-posed C
        scores = {C: _nll(_oof_logits(Z, y, classes, C, seed), y_idx, 1.0) for C in C_GRID}
        C = min(C_GRID, key=lambda c: (round(scores[c], 9), c))
        oof = _oof_logits(Z, y, classes, C, seed)
        res = minimize_scalar(
            lambda lt: _nll(oof, y_idx, float(np.exp(lt))),
            bounds=(-2.0, 2.0),
            method="bounded",
            options={"xatol": 1e-6},
        )
        temperature = float(np.exp(res.x))
        threshold, oof_f1 = _threshold(_softmax(oof, temperature), y, classes)
        model = _lr(C).fit(Z, y)
    coef, intercept = _full_params(model, Z.shape[1], classes)
    params = {
        "mean": mean,
        "scale": scale,
        "coef": coef,
        "intercept": intercept,
        "temperature": temperature,
        "abstain_threshold": threshold,
        "clip": clip,
    }
    report = {
        "sklearn_version": sklearn.__version__,
        "C": C,
        "n_train": int(y.size),
        "n_per_class": {c: int(np.sum(y == c)) for c in classes},
        "oof_log_loss": round(_nll(oof, y_idx, temperature), 6),
        "oof_macro_f1": round(oof_f1, 6),
    }
    return FitResult(params, report)
