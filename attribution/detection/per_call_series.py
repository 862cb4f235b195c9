"""Which series the per-call test watches: the sparse ones and the busy ones whose calls arrive in bursts.

Both choices read the rollup rows of the coarsest grain (two columns: series id and calls) in one pass
(:func:`per_call_keys`); :mod:`.per_call` then tests the chosen series call by call. Kept apart from the test itself:
this is a property of the series' traffic, computed once per pass over every series, while the test runs per series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spanprism.attribution.detection.per_call_config import PerCallConfig


@dataclass
class _Hourly:
    """The rollup rows of the coarsest grain with calls: grain, which rows, their series and counts, and each
    series' typical calls an hour (one pass over two columns, shared by the sparse and the bursty choice)."""

    grain: int
    keep: np.ndarray
    sid: np.ndarray
    n: np.ndarray
    per_hour: pd.Series

    @classmethod
    def of(cls, frame: pd.DataFrame, count: str) -> _Hourly:
        grains, counts = frame["grain_s"].to_numpy(), frame[count].to_numpy()
        grain = int(grains.max())
        keep = (grains == grain) & (counts > 0)  # two columns, not a copy of every statistic of every rollup row
        sid, n = frame["sid"].to_numpy()[keep], counts[keep].astype(np.float64)
        return cls(grain, keep, sid, n, pd.Series(n).groupby(sid).median() * (3600 / grain))


def per_call_keys(frame: pd.DataFrame, keys: list[str], count: str,
                  config: PerCallConfig) -> tuple[list[str], list[str]]:  # fmt: skip
    """The series to test per call: the sparse ones and the bursty ones (:func:`sparse_keys`, :func:`bursty_keys`)."""
    if frame.empty:
        return [], []
    hourly = _Hourly.of(frame, count)
    return _sparse(hourly, keys, config), _bursty(hourly, frame, keys, config)


def sparse_keys(frame: pd.DataFrame, keys: list[str], count: str, config: PerCallConfig) -> list[str]:
    """Series (of rollup rows with ``sid``, ``grain_s``, ``count``) whose typical hourly bucket is too sparse."""
    return [] if frame.empty else _sparse(_Hourly.of(frame, count), keys, config)


def _sparse(hourly: _Hourly, keys: list[str], config: PerCallConfig) -> list[str]:
    if config.sparse_below <= 0:
        return []
    per_hour = hourly.per_hour
    return [keys[int(s)] for s in per_hour.index[per_hour.to_numpy() < config.sparse_below]]


#: Median of a χ²₁ variable: the median squared standardized second difference of Poisson counts.
_CHI2_1_MEDIAN = 0.4549


def bursty_keys(frame: pd.DataFrame, keys: list[str], count: str, config: PerCallConfig) -> list[str]:
    """Series of at least ``sparse_below`` and under ``bursty_below`` typical calls an hour whose hourly arrivals
    come in bursts: over-dispersed ≥ ``bursty_dispersion`` times against Poisson.

    Calls that arrive in bursts share a load level and a session's sizes, so the hourly bucket statistics of such a
    series wander far more than their call counts suggest, and the bucket detector, which judges each hour against
    that wander, misses shifts of 30-60 % over hours and hundreds of calls. The per-call test is built for
    correlated calls (its threshold and confirmation use the hour-batch long-run variance). The dispersion is the
    median over consecutive active hours of the squared second difference of the counts over its Poisson variance
    (``n₋ + 4n + n₊``), relative to the χ²₁ median: about 1 for Poisson arrivals whatever their daily cycle (a second
    difference cancels a smooth trend), so steady fleets add no per-call work. Above ``bursty_below`` calls an hour
    5-minute buckets hold enough calls for the bucket detector's finest grain.
    """
    return [] if frame.empty else _bursty(_Hourly.of(frame, count), frame, keys, config)


def _bursty(hourly: _Hourly, frame: pd.DataFrame, keys: list[str], config: PerCallConfig) -> list[str]:
    if config.bursty_dispersion <= 0 or config.bursty_below <= config.sparse_below:
        return []
    busy = hourly.per_hour.to_numpy()
    wanted = hourly.per_hour.index.to_numpy()[(busy >= config.sparse_below) & (busy < config.bursty_below)]
    if wanted.size == 0:
        return []
    # Only series of the right traffic are candidates: their rows alone are sorted (a month of a fleet is cheap).
    lut = np.zeros(len(keys), dtype=bool)
    lut[wanted] = True
    mine = lut[hourly.sid]
    sid, n, bucket = hourly.sid[mine], hourly.n[mine], frame["bucket_s"].to_numpy()[hourly.keep][mine]
    order = np.lexsort((bucket, sid))
    sid, bucket, n = sid[order], bucket[order], n[order]
    grain = hourly.grain
    mid = np.arange(1, n.size - 1)
    # Triples of consecutive active hours of one series (no gap between them).
    ok = ((sid[mid - 1] == sid[mid + 1]) & (bucket[mid] - bucket[mid - 1] == grain)
          & (bucket[mid + 1] - bucket[mid] == grain))  # fmt: skip
    mid = mid[ok]
    if mid.size == 0:
        return []
    second = n[mid - 1] - 2 * n[mid] + n[mid + 1]
    ratio = second**2 / (n[mid - 1] + 4 * n[mid] + n[mid + 1]) / _CHI2_1_MEDIAN
    per_sid = pd.Series(ratio).groupby(sid[mid]).agg(["median", "size"])
    chosen = (per_sid["median"] >= config.bursty_dispersion) & (per_sid["size"] >= 24)
    return [keys[int(s)] for s in per_sid.index[chosen.to_numpy()]]
