"""The episode state machine: one-sided CUSUM per (series, statistic), open / resolve per series.

Advanced one bucket at a time for every series at once (numpy over the series axis), so a month of 5-minute
buckets for a thousand series is ~9,000 small vector steps, not a Python loop per series.

- Each statistic keeps an upward CUSUM ``S = max(0, S + min(z, cap) − k)`` of its noise-scaled deviation ``z``.
  ``cap = h/min_buckets + k`` means fewer than ``min_buckets`` buckets can never raise an alarm: a spike of one
  5-minute bucket is not an episode (an hour-long bucket of a sparse series may be).
- An episode opens when any statistic's CUSUM reaches ``h`` *and* the mean log change since its run began is
  at least ``min_log_change`` (a statistically clear but tiny shift on a very steady series is not a regression).
  Its onset is the maximum-likelihood change point inside that CUSUM run (for a step of the run's mean size),
  searched over at most the last two days: with a small allowance the run can begin long before the change (a
  slow drift on an hourly grain kept one positive for 70 h), and the run's first bucket would date the episode
  days early.
- It resolves when the statistics' mean ``z`` averaged over the last ``resolve_buckets`` evaluated buckets drops
  below ``resolve_z``; its end is after the last bucket whose mean ``z`` was still clearly high (``hot_z``), so
  noise during the calm window does not stretch it. Quiet gaps shorter than that window stay inside one episode
  (adjacent anomalous stretches merge). After an idle stretch of ``idle_s`` without an evaluated bucket (a quiet
  night), the first bucket back decides alone: calm, the episode resolved before the idle stretch.
- An episode still open ``accept_buckets`` after its onset is *accepted* at the next baseline refit
  (:meth:`EpisodeTracker.accept_settled`): the shift persisted and is the new normal. It closes there with
  ``accepted`` set; the caller re-learns the baseline from its onset on, so a later, further shift is an episode
  of its own. No episode stays open undecided longer than the settle period plus one day: one whose alarm came
  only after that refit (a late alarm on an early onset) is accepted at once, and its series is not evaluated
  again until the next refit has re-learned its baseline (the old baseline would only re-open it).
- A further, clearly larger shift inside an open episode is an episode of its own (escalation). Once the
  episode has settled, its level is the mean deviation of its second ``resolve_buckets`` after the alarm (the
  first are skipped: a ramp may still be rising). A second CUSUM with the same ``k``, ``h`` and cap runs on the
  deviation above that level; it opens a new episode where its run began when it reaches ``h`` with a mean log
  change above the level of at least ``min_log_change`` and half the level itself, and the old episode ends
  there. A ramp of up to an hour still rising at the alarm is done before the level is measured: not split.
Buckets without a value (too few calls, no data) leave every state untouched.

:class:`CusumDetector` is this state machine behind the detector contract (:mod:`.base`), configured by
:class:`CusumConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from spanprism.attribution.baselines.base import DAY_S
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
    idle_s: int = 4 * 3600  # after this long without an evaluated bucket, the first one back decides resolution

    def resolve_buckets(self, grain_s: int) -> int:
        return max(3, self.resolve_after_s // grain_s)

    def min_buckets(self, grain_s: int) -> int:
        return max(1, -(-self.min_duration_s // grain_s))

    def idle_buckets(self, grain_s: int) -> int:
        return max(2, self.idle_s // grain_s)


_NONE = np.zeros(0, dtype=np.int64)


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
                                 min_buckets=c.min_buckets(grain_s), hot_z=c.hot_z,
                                 day_buckets=max(1, DAY_S // grain_s),
                                 idle_buckets=c.idle_buckets(grain_s))  # fmt: skip
        return _CusumRun(n_series, stats, tracker)


class _CusumRun(DetectorRun):
    """Feeds each bucket of a block to the :class:`EpisodeTracker`."""

    def __init__(self, n_series: int, stats: tuple[str, ...], tracker: EpisodeTracker) -> None:
        super().__init__(n_series, stats)
        self.tracker = tracker

    def _update(self, block: Deviations) -> None:
        self.tracker.step_block(block.t0, block.z, block.r)

    def accept_settled(self, t: int, settle_buckets: int) -> None:
        self.tracker.accept_buckets = settle_buckets
        self.tracker.accept_settled(t)

    def spans(self) -> list[Span]:
        return self.tracker.spans()


class EpisodeTracker:
    """Vectorized CUSUM + open/resolve/accept/escalate logic for S series and K statistics of one metric family.

    ``day_buckets`` is the spacing of baseline refits (UTC midnights): the onset search looks back at most two
    of them, and an episode is decided at most ``accept_buckets + day_buckets`` after its onset.
    """

    def __init__(self, n_series: int, n_stats: int, *, k: float, h: float, min_log_change: float,
                 resolve_z: float, resolve_buckets: int, min_buckets: int = 2, hot_z: float = 2.0,
                 accept_buckets: int | None = None, day_buckets: int = 288,
                 idle_buckets: int | None = None) -> None:  # fmt: skip
        self.k, self.h, self.cap, self.hot_z = k, h, h / max(min_buckets, 1) + k, hot_z
        self.accept_buckets, self.day_buckets, self.idle_buckets = accept_buckets, day_buckets, idle_buckets
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
        self.last_seen = np.zeros(n_series, dtype=np.int64)  # last evaluated bucket of an open episode
        # The CUSUM increments of the last two days (ring over columns), for the change-point estimate at an alarm.
        self.history = 2 * day_buckets
        self.zhist = np.full((self.history, n_series, n_stats), np.nan)  # bucket first: one contiguous write a step
        # Escalation: the settled level (mean z and r of the settle window) and a CUSUM above it.
        self.lvl_z, self.lvl_r, self.lvl_n = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.esc = np.zeros(shape)
        self.esc_start = np.zeros(shape, dtype=np.int64)
        self.esc_rsum, self.esc_rcnt = np.zeros(shape), np.zeros(shape)
        self.escalated_from = np.full(n_series, np.nan)  # level (%) of the episode an open one escalated
        self.muted = np.zeros(n_series, dtype=bool)  # accepted off a refit: not evaluated until the next refit
        self.last_refit: int | None = None
        self.closed: list[Span] = []
        self._opened = _NONE  # rows that opened an episode at the last step

    def step(self, t: int, z: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Advance to bucket ``t`` with noise-scaled deviations ``z`` and log changes ``r`` [S, K].

        Returns the rows that opened an episode at ``t``.
        """
        self._step(t, np.minimum(z, self.cap), z, r)
        return self._opened

    def step_block(self, t0: int, z: np.ndarray, r: np.ndarray) -> None:
        """:meth:`step` through buckets ``t0 …`` of ``z`` and ``r`` [S, K, n], in order.

        The same arithmetic bucket by bucket; what does not depend on the state (the capped deviations) is
        computed once per block, and each bucket's [S, K] slice is made contiguous up front (a day of 5-minute
        buckets for a thousand series is 288 steps of a few dozen small vector operations each).
        """
        capped = np.ascontiguousarray(np.moveaxis(np.minimum(z, self.cap), 2, 0))
        zs = np.ascontiguousarray(np.moveaxis(z, 2, 0))
        rs = np.ascontiguousarray(np.moveaxis(r, 2, 0))
        for j in range(zs.shape[0]):
            self._step(t0 + j, capped[j], zs[j], rs[j])

    def _step(self, t: int, capped: np.ndarray, z: np.ndarray, r: np.ndarray) -> None:
        """:meth:`step` given ``capped = min(z, cap)`` (NaN where ``z`` is)."""
        if self.muted.any():  # muted series are not evaluated: as if they had no value
            z = np.where(self.muted[:, None], np.nan, z)
            capped = np.where(self.muted[:, None], np.nan, capped)
        invalid = np.isnan(capped)
        valid = ~invalid
        self.zhist[t % self.history] = capped  # NaN where not evaluated
        # Where valid: max(0, S + min(z, cap) − k), the same operations in the same order; elsewhere S unchanged.
        new = np.maximum(0.0, self.cusum + capped - self.k)
        np.copyto(new, self.cusum, where=invalid)
        positive = new > 0
        # A run starts where S leaves 0 (never where the bucket had no value: S was carried over unchanged).
        starting = (self.cusum == 0) & positive
        grow = valid & positive
        reset = new == 0
        if starting.any():
            self.run_start[starting] = t
            np.copyto(self.rsum, 0.0, where=starting)
            np.copyto(self.rcnt, 0.0, where=starting)
        np.add(self.rsum, r, out=self.rsum, where=grow)  # where not growing: unchanged (was + 0.0)
        np.add(self.rcnt, 1.0, out=self.rcnt, where=grow)
        np.copyto(self.rsum, 0.0, where=reset)
        np.copyto(self.rcnt, 0.0, where=reset)
        self.cusum = new
        self._opened = _NONE
        high = new >= self.h
        if high.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                alarm_k = high & (self.rsum / self.rcnt >= self.min_log_change)
            opening = ~self.open & alarm_k.any(axis=1)
            if opening.any():
                self._opened = np.flatnonzero(opening)
                self._open(t, opening, alarm_k)
        if self.open.any():
            self._track_open(t, z, r)

    def _change_point(self, row: int, k: int, start: int, t: int) -> int:
        """Maximum-likelihood onset, in the CUSUM run ``[start, t]`` of statistic ``k``, of a step of the run's mean
        size (allowance half of it), searched over the last two days at most."""
        lo = max(start, t - self.history + 2)
        cols = np.arange(lo, t + 1)
        seg = self.zhist[cols % self.history, row, k]
        scored = ~np.isnan(seg)
        if not scored.any():
            return lo
        half = max(self.k, float(seg[scored].mean()) / 2)
        prefix = np.concatenate([[0.0], np.cumsum(np.where(scored, seg - half, 0.0))])
        j = int(np.argmin(prefix[:-1]))  # the buckets from j on carry the largest excess
        return lo + j + int(np.argmax(scored[j:]))

    def _open(self, t: int, opening: np.ndarray, alarm_k: np.ndarray) -> None:
        rows = np.flatnonzero(opening)
        for row in rows:
            self.onset[row] = min(self._change_point(int(row), int(k), int(self.run_start[row, k]), t)
                                  for k in np.flatnonzero(alarm_k[row]))  # fmt: skip
        self._start_episode(rows, t)
        self.escalated_from[rows] = np.nan
        self._accept_overdue(rows, t)

    def _start_episode(self, rows: np.ndarray, t: int) -> None:
        self.open[rows] = True
        self.alarm[rows] = t
        self.last_hot[rows] = t
        self.peak[rows] = t
        self.peak_val[rows] = -np.inf
        self.ring[rows] = np.nan
        self.ring_n[rows] = 0
        self.last_seen[rows] = t
        self.lvl_z[rows], self.lvl_r[rows], self.lvl_n[rows] = 0.0, 0.0, 0.0
        self.esc[rows], self.esc_rsum[rows], self.esc_rcnt[rows] = 0.0, 0.0, 0.0

    def _accept_overdue(self, rows: np.ndarray, t: int) -> None:
        """Accept at once (at ``t + 1``) the episodes among ``rows`` whose settle refit already passed, or that
        reached the deadline (settle period plus one day), so none is left undecided past it."""
        if self.accept_buckets is None or not rows.size:
            return
        rows = rows[self.open[rows]]
        overdue = t + 1 - self.onset[rows] >= self.accept_buckets + self.day_buckets
        if self.last_refit is not None:
            overdue |= self.last_refit - self.onset[rows] >= self.accept_buckets
        late = rows[overdue]
        for row in late:
            self.closed.append(Span(int(row), int(self.onset[row]), int(self.alarm[row]), int(self.peak[row]), t + 1,
                                    accepted=True, escalated_from_pct=self._escalated(int(row))))  # fmt: skip
        self._close(late)
        self.muted[late] = True

    def _escalated(self, row: int) -> float | None:
        value = self.escalated_from[row]
        return None if np.isnan(value) else round(float(value), 2)

    def _track_open(self, t: int, z: np.ndarray, r: np.ndarray) -> None:
        rows = np.flatnonzero(self.open)
        zo = z[rows]
        valid = ~np.isnan(zo)
        has = valid.any(axis=1)
        with np.errstate(invalid="ignore"):
            zmean = np.where(valid, zo, 0.0).sum(axis=1) / valid.sum(axis=1)
        pushed = rows[has]
        back = np.zeros(pushed.size, dtype=bool)
        if self.idle_buckets is not None:
            # Back from an idle stretch (a quiet night): what the series did before it says nothing about now, and
            # waiting for a full calm window would let the morning's next cause join this episode.
            back = t - self.last_seen[pushed] >= self.idle_buckets
            self.ring[pushed[back]] = np.nan
            self.ring_n[pushed[back]] = 0
        self.last_seen[pushed] = t
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
        calm = np.union1d(calm, pushed[back & (zmean[has] < self.resolve_z)])
        for row in calm:
            self.closed.append(Span(int(row), int(self.onset[row]), int(self.alarm[row]), int(self.peak[row]),
                                    int(self.last_hot[row]) + 1,
                                    escalated_from_pct=self._escalated(int(row))))  # fmt: skip
        self._close(calm)
        self._escalate(t, z, r, np.setdiff1d(rows, calm))
        self._accept_overdue(np.flatnonzero(self.open), t)

    def _escalate(self, t: int, z: np.ndarray, r: np.ndarray, rows: np.ndarray) -> None:
        """Settle each open episode's level, then watch for a clearly larger shift above it (module docstring)."""
        if not rows.size:
            return
        zo, ro = z[rows], r[rows]
        valid = ~np.isnan(zo)
        # The first resolve window after the alarm is skipped (a ramp still rising), the second sets the level.
        age = self.ring_n[rows][:, None]
        settling = (age > self.resolve_buckets) & (age <= 2 * self.resolve_buckets) & valid
        self.lvl_z[rows] += np.where(settling, zo, 0.0)
        self.lvl_r[rows] += np.where(settling, ro, 0.0)
        self.lvl_n[rows] += settling
        watching = (age > 2 * self.resolve_buckets) & valid & (self.lvl_n[rows] > 0)
        if not watching.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            level_z, level_r = self.lvl_z[rows] / self.lvl_n[rows], self.lvl_r[rows] / self.lvl_n[rows]
        excess = np.where(watching, np.minimum(zo - level_z, self.cap), 0.0)
        before = self.esc[rows]
        new = np.where(watching, np.maximum(0.0, before + excess - self.k), before)
        starting = watching & (before == 0) & (new > 0)
        self.esc_start[rows] = np.where(starting, t, self.esc_start[rows])
        self.esc_rsum[rows] = np.where(starting, 0.0, self.esc_rsum[rows])
        self.esc_rcnt[rows] = np.where(starting, 0.0, self.esc_rcnt[rows])
        grow = watching & (new > 0)
        self.esc_rsum[rows] += np.where(grow, ro - level_r, 0.0)
        self.esc_rcnt[rows] += grow
        self.esc_rsum[rows] = np.where(new == 0, 0.0, self.esc_rsum[rows])
        self.esc_rcnt[rows] = np.where(new == 0, 0.0, self.esc_rcnt[rows])
        self.esc[rows] = new
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.esc_rsum[rows] / self.esc_rcnt[rows]
            clearly = (mean >= self.min_log_change) & (mean >= 0.5 * np.maximum(level_r, 0.0))
        fired = (new >= self.h) & clearly
        for i in np.flatnonzero(fired.any(axis=1)):
            row = int(rows[i])
            ks = np.flatnonzero(fired[i])
            cut = max(int(self.esc_start[row, ks].min()), int(self.alarm[row]) + 1)
            self.closed.append(Span(row, int(self.onset[row]), int(self.alarm[row]), int(self.peak[row]), cut,
                                    escalated_from_pct=self._escalated(row)))  # fmt: skip
            self.escalated_from[row] = 100 * float(np.expm1(np.nanmax(level_r[i, ks])))
            self.onset[row] = cut
            self._start_episode(np.array([row]), t)
            self.cusum[row] = 0.0  # the episode CUSUM already alarmed; re-armed for after this one is decided
            self.rsum[row], self.rcnt[row] = 0.0, 0.0

    def accept_settled(self, t: int) -> None:
        """Close, as accepted at ``t``, every episode open for ``accept_buckets`` since its onset.

        Called at a baseline refit (a UTC midnight), so the re-learned baseline is in use from ``t`` on; series
        accepted since the previous refit are evaluated again from here.
        """
        self.last_refit = t
        self.muted[:] = False
        if self.accept_buckets is None:
            return
        rows = np.flatnonzero(self.open & (t - self.onset >= self.accept_buckets))
        for row in rows:
            self.closed.append(Span(int(row), int(self.onset[row]), int(self.alarm[row]), int(self.peak[row]), t,
                                    accepted=True, escalated_from_pct=self._escalated(int(row))))  # fmt: skip
        self._close(rows)

    def _close(self, rows: np.ndarray) -> None:
        if rows.size:
            self.open[rows] = False
            self.cusum[rows] = 0.0
            self.rsum[rows], self.rcnt[rows] = 0.0, 0.0
            self.esc[rows] = 0.0

    def spans(self) -> list[Span]:
        """Every episode seen so far: resolved ones, then those still open (``end`` None)."""
        still = [Span(int(r), int(self.onset[r]), int(self.alarm[r]), int(self.peak[r]), None,
                      escalated_from_pct=self._escalated(int(r)))
                 for r in np.flatnonzero(self.open)]  # fmt: skip
        return [*self.closed, *still]
