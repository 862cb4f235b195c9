"""The episode state machine: one-sided CUSUM per (series, statistic), open / resolve per series.

Advanced one bucket at a time for every series at once (numpy over the series axis), so a month of 5-minute
buckets for a thousand series is ~9,000 small vector steps, not a Python loop per series.

- Each statistic keeps an upward CUSUM ``S = max(0, S + min(z, cap) − k)`` of its noise-scaled deviation ``z``.
  ``cap = h/min_buckets + k`` means fewer than ``min_buckets`` buckets can never raise an alarm: a spike of one
  5-minute bucket is not an episode (an hour-long bucket of a sparse series may be).
- An episode opens when any statistic's CUSUM reaches ``h`` *and* the mean log change since its run began is
  at least ``min_log_change`` (a statistically clear but tiny shift on a very steady series is not a regression).
  Its onset is where that CUSUM run began (the change point estimate), not where the alarm fired.
- It resolves when the statistics' mean ``z`` averaged over the last ``resolve_buckets`` evaluated buckets drops
  below ``resolve_z``; its end is after the last bucket whose mean ``z`` was still clearly high (``hot_z``), so
  noise during the calm window does not stretch it. Quiet gaps shorter than that window stay inside one episode
  (adjacent anomalous stretches merge).
- An episode still open ``accept_buckets`` after its onset is *accepted* at the next baseline refit
  (:meth:`EpisodeTracker.accept_settled`): the shift persisted and is the new normal. It closes there with
  ``accepted`` set; the caller re-learns the baseline from its onset on, so a later, further shift is an episode
  of its own. No episode stays open undecided longer than the settle period plus one day.
Buckets without a value (too few calls, no data) leave every state untouched.

:class:`CusumDetector` is this state machine behind the detector contract (:mod:`.base`), configured by
:class:`CusumConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from spanprism.attribution.detection.base import Detector, DetectorConfig, DetectorRun, Deviations, Span


@dataclass(frozen=True)
class CusumConfig(DetectorConfig):
    """Sensitivity and timing of the CUSUM detector. Lower ``h`` or ``min_change_pct`` = more sensitive."""

    k: float = 1.0  # allowance per bucket, in noise units
    h: float = 6.0  # alarm threshold; a single bucket can add at most h/2 + k
    min_change_pct: float = 10.0  # mean change since the run began, below which nothing opens
    min_duration_s: int = 600  # no episode from less data than this (one bucket when buckets are longer)
    resolve_z: float = 1.0  # back to baseline: mean deviation over the resolve window below this
    hot_z: float = 2.0  # a bucket this far above baseline (mean over statistics) still belongs to the episode
    resolve_after_s: int = 3600  # how long the series must look normal before an episode resolves

    def resolve_buckets(self, grain_s: int) -> int:
        return max(3, self.resolve_after_s // grain_s)

    def min_buckets(self, grain_s: int) -> int:
        return max(1, -(-self.min_duration_s // grain_s))


class CusumDetector(Detector):
    """One-sided CUSUM per statistic over noise-scaled bucket deviations; opens on any statistic's alarm."""

    name: ClassVar[str] = "cusum"
    version: ClassVar[int] = 1
    config_class: ClassVar[type[DetectorConfig]] = CusumConfig
    config: CusumConfig

    def _start(self, n_series: int, stats: tuple[str, ...], grain_s: int) -> DetectorRun:
        c = self.config
        min_log_change = float(np.log1p(c.min_change_pct / 100))
        tracker = EpisodeTracker(n_series, len(stats), k=c.k, h=c.h, min_log_change=min_log_change,
                                 resolve_z=c.resolve_z, resolve_buckets=c.resolve_buckets(grain_s),
                                 min_buckets=c.min_buckets(grain_s), hot_z=c.hot_z)  # fmt: skip
        return _CusumRun(n_series, stats, tracker)


class _CusumRun(DetectorRun):
    """Feeds each bucket of a block to the :class:`EpisodeTracker`."""

    def __init__(self, n_series: int, stats: tuple[str, ...], tracker: EpisodeTracker) -> None:
        super().__init__(n_series, stats)
        self.tracker = tracker

    def _update(self, block: Deviations) -> None:
        for j in range(block.n):
            self.tracker.step(block.t0 + j, block.z[:, :, j], block.r[:, :, j])

    def accept_settled(self, t: int, settle_buckets: int) -> None:
        self.tracker.accept_buckets = settle_buckets
        self.tracker.accept_settled(t)

    def spans(self) -> list[Span]:
        return self.tracker.spans()


class EpisodeTracker:
    """Vectorized CUSUM + open/resolve logic for S series and K statistics of one metric family."""

    def __init__(self, n_series: int, n_stats: int, *, k: float, h: float, min_log_change: float,
                 resolve_z: float, resolve_buckets: int, min_buckets: int = 2, hot_z: float = 2.0,
                 accept_buckets: int | None = None) -> None:  # fmt: skip
        self.k, self.h, self.cap, self.hot_z = k, h, h / max(min_buckets, 1) + k, hot_z
        self.accept_buckets = accept_buckets
        self.min_log_change, self.resolve_z, self.resolve_buckets = min_log_change, resolve_z, resolve_buckets
        shape = (n_series, n_stats)
        self.cusum = np.zeros(shape)
        self.run_start = np.zeros(shape, dtype=np.int64)
        self.rsum = np.zeros(shape)
        self.rcnt = np.zeros(shape)
        self.open = np.zeros(n_series, dtype=bool)
        self.onset = np.zeros(n_series, dtype=np.int64)
        self.alarm = np.zeros(n_series, dtype=np.int64)
        self.last_hot = np.zeros(n_series, dtype=np.int64)
        self.peak = np.zeros(n_series, dtype=np.int64)
        self.peak_val = np.full(n_series, -np.inf)
        self.ring = np.full((n_series, resolve_buckets), np.nan)
        self.ring_pos = np.zeros(n_series, dtype=np.int64)
        self.ring_n = np.zeros(n_series, dtype=np.int64)
        self.closed: list[Span] = []

    def step(self, t: int, z: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Advance to bucket ``t`` with noise-scaled deviations ``z`` and log changes ``r`` [S, K].

        Returns the rows that opened an episode at ``t``.
        """
        valid = ~np.isnan(z)
        zc = np.where(valid, np.minimum(z, self.cap), 0.0)
        new = np.where(valid, np.maximum(0.0, self.cusum + zc - self.k), self.cusum)
        starting = valid & (self.cusum == 0) & (new > 0)
        self.run_start[starting] = t
        self.rsum[starting] = 0.0
        self.rcnt[starting] = 0.0
        grow = valid & (new > 0)
        self.rsum += np.where(grow, r, 0.0)
        self.rcnt += grow
        reset = new == 0
        self.rsum[reset], self.rcnt[reset] = 0.0, 0.0
        self.cusum = new
        with np.errstate(invalid="ignore", divide="ignore"):
            gate = self.rsum / self.rcnt >= self.min_log_change
        alarm_k = (new >= self.h) & gate
        opening = ~self.open & alarm_k.any(axis=1)
        if opening.any():
            self._open(t, opening, alarm_k)
        if self.open.any():
            self._track_open(t, z, r)
        return np.flatnonzero(opening)

    def _open(self, t: int, opening: np.ndarray, alarm_k: np.ndarray) -> None:
        starts = np.where(alarm_k, self.run_start, np.iinfo(np.int64).max).min(axis=1)
        self.open |= opening
        self.onset[opening] = starts[opening]
        self.alarm[opening] = t
        self.last_hot[opening] = t
        self.peak[opening] = t
        self.peak_val[opening] = -np.inf
        self.ring[opening] = np.nan
        self.ring_n[opening] = 0

    def _track_open(self, t: int, z: np.ndarray, r: np.ndarray) -> None:
        rows = np.flatnonzero(self.open)
        zo = z[rows]
        valid = ~np.isnan(zo)
        has = valid.any(axis=1)
        with np.errstate(invalid="ignore"):
            zmean = np.where(valid, zo, 0.0).sum(axis=1) / valid.sum(axis=1)
        pushed = rows[has]
        self.ring[pushed, self.ring_pos[pushed] % self.resolve_buckets] = zmean[has]
        self.ring_pos[pushed] += 1
        self.ring_n[pushed] += 1
        hot = rows[has & (zmean >= self.hot_z)]
        self.last_hot[hot] = t
        primary = r[rows, 0]
        better = ~np.isnan(primary) & (primary > self.peak_val[rows])
        self.peak[rows[better]] = t
        self.peak_val[rows[better]] = primary[better]
        full = rows[self.ring_n[rows] >= self.resolve_buckets]
        calm = full[np.nanmean(self.ring[full], axis=1) < self.resolve_z] if full.size else full
        for row in calm:
            self.closed.append(Span(int(row), int(self.onset[row]), int(self.alarm[row]), int(self.peak[row]),
                                    int(self.last_hot[row]) + 1))  # fmt: skip
        self._close(calm)

    def accept_settled(self, t: int) -> None:
        """Close, as accepted at ``t``, every episode open for ``accept_buckets`` since its onset.

        Called at a baseline refit (a UTC midnight), so the re-learned baseline is in use from ``t`` on.
        """
        if self.accept_buckets is None:
            return
        rows = np.flatnonzero(self.open & (t - self.onset >= self.accept_buckets))
        for row in rows:
            self.closed.append(Span(int(row), int(self.onset[row]), int(self.alarm[row]), int(self.peak[row]), t,
                                    accepted=True))  # fmt: skip
        self._close(rows)

    def _close(self, rows: np.ndarray) -> None:
        if rows.size:
            self.open[rows] = False
            self.cusum[rows] = 0.0
            self.rsum[rows], self.rcnt[rows] = 0.0, 0.0

    def spans(self) -> list[Span]:
        """Every episode seen so far: resolved ones, then those still open (``end`` None)."""
        still = [Span(int(r), int(self.onset[r]), int(self.alarm[r]), int(self.peak[r]), None)
                 for r in np.flatnonzero(self.open)]  # fmt: skip
        return [*self.closed, *still]
