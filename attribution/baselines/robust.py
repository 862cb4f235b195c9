"""Vectorized robust statistics over panels with missing values (NaN), shared by the baselines.

``numpy.nanmedian`` falls back to a Python loop over rows for long rows; these helpers sort once along the last
axis (NaN sorts last) and pick the middle by the count of valid values, so a whole panel of series is one call.
"""

from __future__ import annotations

import numpy as np

#: MAD → standard deviation under normality.
MAD_TO_SD = 1.4826


def nanmedian(a: np.ndarray, axis: int = -1, min_count: int = 1) -> np.ndarray:
    """Median along ``axis`` ignoring NaN; NaN where fewer than ``min_count`` values are valid."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    if a.shape[-1] == 0:
        return np.full(a.shape[:-1], np.nan)
    s = np.sort(a, axis=-1)
    n = np.sum(~np.isnan(a), axis=-1)
    lo = np.clip((n - 1) // 2, 0, None)[..., None]
    hi = np.clip(n // 2, 0, None)[..., None]
    med = 0.5 * (np.take_along_axis(s, lo, -1) + np.take_along_axis(s, hi, -1))[..., 0]
    return np.where(n >= max(min_count, 1), med, np.nan)


def nanquantile(a: np.ndarray, q: float, axis: int = -1, min_count: int = 1) -> np.ndarray:
    """Lower-order-statistic quantile ``q`` along ``axis`` ignoring NaN (sort once, index by the valid count)."""
    return nanmedian_and_quantile(a, q, axis, min_count)[1]


def nanmedian_and_quantile(a: np.ndarray, q: float, axis: int = -1,
                           min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(:func:`nanmedian`, :func:`nanquantile`) from one sort: panels of a month of 5-minute buckets are big."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    if a.shape[-1] == 0:
        empty = np.full(a.shape[:-1], np.nan)
        return empty, empty.copy()
    s = np.sort(a, axis=-1)
    n = np.sum(~np.isnan(a), axis=-1)
    enough = n >= max(min_count, 1)
    lo = np.clip((n - 1) // 2, 0, None)[..., None]
    hi = np.clip(n // 2, 0, None)[..., None]
    med = 0.5 * (np.take_along_axis(s, lo, -1) + np.take_along_axis(s, hi, -1))[..., 0]
    idx = np.clip(np.floor(q * (n - 1)).astype(np.int64), 0, None)[..., None]
    return np.where(enough, med, np.nan), np.where(enough, np.take_along_axis(s, idx, -1)[..., 0], np.nan)


def nanmad_sd(a: np.ndarray, axis: int = -1, min_count: int = 3) -> np.ndarray:
    """Robust standard deviation (1.4826 × median absolute deviation) along ``axis``."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    med = nanmedian(a, -1, min_count)
    return MAD_TO_SD * nanmedian(np.abs(a - med[..., None]), -1, min_count)


def count_valid(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Number of non-NaN values along ``axis``."""
    return np.sum(~np.isnan(a), axis=axis)


def profile_inflation(n_per_estimate: np.ndarray, weight: np.ndarray | float = 1.0) -> np.ndarray:
    """Out-of-sample / in-sample spread ratio for a median fitted on ``n`` points and judged on new ones.

    In-sample residuals shrink by ≈ sqrt((n−1)/n) and the fitted median itself errs with variance ≈ (π/2)σ²/n,
    so residual spreads measured in-sample understate the noise a new bucket sees, badly so for few days.
    ``weight`` (0-1) is how much of the fitted effect is actually used: an effect shrunk by ``w`` adds only
    w² of its estimation variance and takes only w of the in-sample shrinkage (w = 0: nothing was fitted).
    """
    n = np.maximum(np.asarray(n_per_estimate, dtype=np.float64), 2.0)
    w = np.clip(np.asarray(weight, dtype=np.float64), 0.0, 1.0)
    return np.sqrt((1.0 + w**2 * 1.5708 / n) * (1.0 + w / (n - 1.0)))


def spread_upper(n_values: np.ndarray) -> np.ndarray:
    """Factor lifting a MAD-based spread from ``n`` values to about one standard error above it.

    The MAD of n normal values has a relative standard error of ≈ 1.17/√n; judging new buckets against an
    underestimated spread is what makes a young baseline alarm, so young baselines are given the benefit of
    the doubt (×1.24 on one day of hourly slots, ×1.05 on four weeks).
    """
    n = np.maximum(np.asarray(n_values, dtype=np.float64), 1.0)
    return 1.0 + 1.17 / np.sqrt(n)
