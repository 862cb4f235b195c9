"""The calls of an episode window where the change is: the window the classifier is asked to explain.

A regression's window is where detection saw the metric up, and on a sparse series that can be far wider than the
cause: a per-call onset placed hours early (a few calls an hour leave the change point loose), an episode that resolves
late because the series' own prompt or output sizes keep drifting, episodes of several metrics chained into one
regression. Calls from before and after the cause then mix into the window and blur its picture: a per-call ITL split
into two speeds reads as a partial route move, hours of the series' own output drift outweigh a 90-minute contention.

So before decomposing, :func:`focus` looks for the contiguous run of episode calls that carries the largest excess of
the metric over the baseline, on the residual of ln latency after the call's own prompt and output sizes (slopes fitted
on the baseline, as the per-call detector does): growth of the series' own traffic does not show in that residual and
so cannot pull the run wide, while a provider-side change (contention, a route, an eviction) does. The run is the
maximum-sum segment of ``z − k`` (``z``: the residual standardized by the baseline's robust spread, clipped; ``k``: half
the run's own mean shift, the maximum-likelihood change points of a step of that size, and never less than
``K_MIN + m``, where ``m`` is the error the baseline's own estimate of normal may carry, a few standard errors for its
number of calls). It replaces the window only when it is significant for the number of calls searched: under no
change the best segment of ``n`` unit-variance increments with drift ``−(k − m)`` exceeds ``h`` with probability at
most about ``n·exp(−2(k − m)h)``, so ``h = ln(n/α) / 2(k − m)`` keeps a false narrowing below ``α`` whatever the
window's length. Without a significant run (own-traffic growth, a change the
whole window shares) the window stays as detection placed it; so it does when the calls outside the run moved too (raw
ln latency significantly above the baseline): the run is then a burst inside a wider change, not the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from spanprism.attribution.calls_window import CallWindow
from spanprism.attribution.decomposition.decompose import metric_values, parse_metric
from spanprism.models.times import iso_z

#: Chance of narrowing a window in which nothing changed (the run's significance level).
ALPHA = 0.01
#: Smallest allowance (sd units) and clip of the standardized residual (one slow call adds at most CLIP − k).
K_MIN = 0.25
#: Baseline standard errors the allowance covers: a run is built only of calls further from normal than the baseline's
#: own uncertainty about normal (else a long window would add that uncertainty up into a "run").
BASELINE_SE = 2.5
#: Columns of the residual's token model: intercept, ln(1 + input), ln(1 + output).
_DESIGN_COLUMNS = 3
CLIP = 3.0
#: Fewest calls a focused run must hold (fewer cannot be decomposed) and fewest baseline calls to fit the residual.
MIN_RUN_CALLS = 10
MIN_BASELINE_CALLS = 30
#: One-sided z above which the calls outside the run moved too (their raw latency), so the window stays whole.
OUTSIDE_Z = 2.33
#: A run that keeps at least this share of the window's calls is the window: nothing to narrow.
KEEP_ALL_SHARE = 0.9


@dataclass(frozen=True)
class Focus:
    """The run of episode calls (positions ``[first, last]`` in time order) and the statistic behind it."""

    first: int
    last: int
    statistic: float
    threshold: float
    calls: int
    of_calls: int

    def evidence(self, start_s: float, end_s: float) -> dict[str, object]:
        """The evidence row: the calls attributed (first and last call start), of how many, and the run's test."""
        return {
            "signal": "focus_window",
            "baseline": None,
            "observed": None,
            "start": iso_z(datetime.fromtimestamp(start_s, UTC)),
            "end": iso_z(datetime.fromtimestamp(end_s, UTC)),
            "calls": self.calls,
            "of_calls": self.of_calls,
            "statistic": round(self.statistic, 3),
            "threshold": round(self.threshold, 3),
        }


def _design(w: CallWindow) -> np.ndarray:
    return np.column_stack([np.ones(w.n), np.log1p(w.input), np.log1p(w.output)])


def _slopes(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least squares of ln latency on [1, ln tokens], refitted without residuals beyond 3 robust sd; a ridge keeps a
    constant token column (a fixed max_tokens) solvable."""
    gram = x.T @ x
    coef = np.linalg.solve(gram + 1e-6 * np.eye(x.shape[1]) * max(float(np.trace(gram)), 1.0), x.T @ y)
    resid = y - x @ coef
    mad = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    keep = np.abs(resid - np.median(resid)) <= 3 * mad + 1e-9
    if keep.sum() > 5 * x.shape[1]:
        gram = x[keep].T @ x[keep]
        coef = np.linalg.solve(gram + 1e-6 * np.eye(x.shape[1]) * max(float(np.trace(gram)), 1.0), x[keep].T @ y[keep])
    return coef


@dataclass(frozen=True)
class TokenResiduals:
    """Per episode call (time order): the ln-latency residual after the call's own prompt and output sizes, in
    baseline units. ``z`` is standardized to unit variance (clipped; NaN where the call shows no value of the metric),
    ``scale`` turns a mean clipped robust z back into ln units (``ln_shift``)."""

    z: np.ndarray
    scale: float  # ln units per unit of z
    n_baseline: int
    raw: np.ndarray | None = None  # the same standardization of ln latency *not* adjusted for tokens

    @property
    def baseline_var(self) -> float:
        """Variance (z units²) of the baseline's own estimate of "normal" that every episode call shares: the median
        (π/2n) plus the token slopes fitted on the same calls (about one 1/n per parameter). However many calls the
        episode holds, a shift smaller than a few of these standard errors may be the baseline's, not the episode's."""
        return (np.pi / 2 + _DESIGN_COLUMNS) / self.n_baseline

    @property
    def margin(self) -> float:
        """:data:`BASELINE_SE` baseline standard errors: how far "normal" itself may be off, in z units."""
        return BASELINE_SE * float(np.sqrt(self.baseline_var))

    def shift(self, rows: slice | np.ndarray | None = None) -> tuple[float, float, int]:
        """(mean shift in ln units, its z statistic, calls) over ``rows`` (all calls by default); the statistic's
        variance counts the episode calls' own noise (1/m) and the baseline's (:attr:`baseline_var`)."""
        z = self.z if rows is None else self.z[rows]
        z = z[np.isfinite(z)]
        if not z.size:
            return 0.0, 0.0, 0
        mean = float(np.mean(z))
        return mean * self.scale, mean / float(np.sqrt(1.0 / z.size + self.baseline_var)), int(z.size)


def token_residuals(base: CallWindow, epi: CallWindow, metric: str) -> TokenResiduals | None:
    """The :class:`TokenResiduals` of ``epi`` against ``base``; None when the baseline cannot fit them."""
    spec = parse_metric(metric)
    vb, ve = metric_values(base, spec), metric_values(epi, spec)
    ok_b = np.isfinite(vb) & (vb > 0)
    if np.count_nonzero(ok_b) < MIN_BASELINE_CALLS:
        return None
    xb = _design(base)[ok_b]
    yb = np.log(vb[ok_b])
    coef = _slopes(yb, xb)
    rb = yb - xb @ coef
    center = float(np.median(rb))
    scale = max(1.4826 * float(np.median(np.abs(rb - center))), 1e-3)
    # The clipped residual's own sd in the baseline: the test's in-control variance is 1 whatever the tails.
    sd = max(float(np.std(np.clip((rb - center) / scale, -CLIP, CLIP))), 0.3)
    with np.errstate(divide="ignore", invalid="ignore"):
        ze = (np.log(ve) - _design(epi) @ coef - center) / scale
        raw_center = float(np.median(yb))
        raw_scale = max(1.4826 * float(np.median(np.abs(yb - raw_center))), 1e-3)
        raw_sd = max(float(np.std(np.clip((yb - raw_center) / raw_scale, -CLIP, CLIP))), 0.3)
        zr = (np.log(ve) - raw_center) / raw_scale
    return TokenResiduals(
        np.where(np.isfinite(ze), np.clip(ze, -CLIP, CLIP) / sd, np.nan),
        scale * sd,
        yb.size,
        np.where(np.isfinite(zr), np.clip(zr, -CLIP, CLIP) / raw_sd, np.nan),
    )


def _best_run(z: np.ndarray, k: float) -> tuple[int, int, float]:
    """(first, last, sum) of the maximum-sum segment of ``z − k`` over the scored calls (NaN calls add nothing)."""
    inc = np.where(np.isnan(z), 0.0, z - k)
    cum = np.concatenate([[0.0], np.cumsum(inc)])
    low_at = np.minimum.accumulate(cum[:-1])
    gain = cum[1:] - low_at  # best sum of a segment ending at each call
    last = int(np.argmax(gain))
    first = int(np.flatnonzero(cum[: last + 1] == low_at[last])[-1])
    return first, last, float(gain[last])


def focus(residuals: TokenResiduals | None, epi: CallWindow) -> Focus | None:
    """The significant run of ``epi`` (time order) that carries the change, or None (keep the whole window)."""
    if residuals is None or not epi.start_known:  # without start times the rows have no time order to cut
        return None
    z = residuals.z
    scored = np.isfinite(z)
    n = int(np.count_nonzero(scored))
    if n < MIN_RUN_CALLS:
        return None
    # The allowance covers the baseline's own error (every episode call shares it) plus K_MIN; the threshold is set
    # for the drift that is left when "normal" is off by that much.
    margin = residuals.margin
    first, last, _ = _best_run(z, K_MIN + margin)
    # Second pass with the allowance at half the run's own mean shift: the change points of a step of that size.
    shift = float(np.nanmean(z[first : last + 1])) if np.any(scored[first : last + 1]) else 0.0
    k = max(K_MIN + margin, shift / 2)
    first, last, stat = _best_run(z, k)
    h = float(np.log(n / ALPHA) / (2 * (k - margin)))
    calls = int(np.count_nonzero(scored[first : last + 1]))
    if stat < h or calls < MIN_RUN_CALLS or last - first + 1 >= KEEP_ALL_SHARE * epi.n:
        return None
    if _outside_moved(residuals, first, last):
        return None
    return Focus(first, last, stat, h, calls, n)


def _outside_moved(residuals: TokenResiduals, first: int, last: int) -> bool:
    """Did the calls outside the run move too (raw ln latency, tokens included, significantly above the baseline)?
    Then the window's change is not the run's alone — e.g. the series' own prompts grew over the whole window and
    the run is a burst of slow calls inside it — and narrowing would explain the wrong calls."""
    if residuals.raw is None:
        return False
    outside = np.concatenate([residuals.raw[:first], residuals.raw[last + 1 :]])
    outside = outside[np.isfinite(outside)]
    if outside.size < MIN_RUN_CALLS:
        return False
    z = float(np.mean(outside)) / float(np.sqrt(1.0 / outside.size + residuals.baseline_var))
    return z >= OUTSIDE_Z
