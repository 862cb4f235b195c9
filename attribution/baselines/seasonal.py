"""Seasonal baseline: a robust additive profile in log space, level + hour-of-day + day-of-week.

It is a median-based cousin of STL, fitted for all series at once: the level is the median of the slot medians,
the hour-of-day effect the median over days of each slot's deviation from it, the day-of-week effect the median
of each day's remaining deviation (only with ≥ ``dow_min_days`` days of history, else 0), and a recent-level
correction the median residual of the last ``level_hours``, so slow drift is followed without chasing spikes.
The scale is the residual MAD between slots combined with the bucket noise inside a slot. Needs
``min_days`` days (≥ 2 by default) with at least half their slots observed; the rolling baseline covers the rest.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from spanprism.attribution.baselines.base import DAY_S, Baseline, History
from spanprism.attribution.baselines.robust import count_valid, nanmad_sd, nanmedian, profile_inflation, spread_upper


def day_of_week(epoch_s: np.ndarray) -> np.ndarray:
    """Monday = 0 (1970-01-01 was a Thursday)."""
    return (np.asarray(epoch_s, dtype=np.int64) // DAY_S + 3) % 7


class SeasonalBaseline(Baseline):
    """Hour-of-day × day-of-week robust profile; the preferred kind once two days of history exist."""

    name: ClassVar[str] = "seasonal"
    version: ClassVar[int] = 1
    defaults: ClassVar[dict[str, float]] = {
        "lookback_days": 28.0, "min_days": 2.0, "min_slot_days": 2.0, "dow_min_days": 7.0,
        "level_hours": 24.0, "scale_floor": 0.01,
    }  # fmt: skip

    def _fit(self, history: History) -> dict[str, np.ndarray]:
        o = self.options
        h = history.window(history.days - int(o["lookback_days"]), history.days)
        med = h.slot_stats()[0]  # [S, D, slots]
        n, spd = med.shape[0], med.shape[2]
        good_days = np.sum(count_valid(med, -1) * 2 >= spd, axis=-1)
        level0 = nanmedian(med.reshape(n, -1), -1)
        hod = nanmedian(med - level0[:, None, None], axis=1, min_count=int(o["min_slot_days"]))
        hod, weight = self._shrink(np.nan_to_num(hod, nan=0.0), med - level0[:, None, None])
        resid = med - level0[:, None, None] - hod[:, None, :]
        dow = self._dow_effect(h, resid, good_days)
        day_dow = day_of_week(h.start_s + DAY_S * np.arange(h.days))
        resid = resid - dow[:, day_dow][:, :, None]
        flat = resid.reshape(n, -1)
        n_recent = max(1, int(o["level_hours"] * 3600 // (h.per_slot * h.grain_s)))
        shift = np.nan_to_num(nanmedian(flat[:, -n_recent:], -1), nan=0.0)
        # Each hour-of-day effect is a median over this many days: few days → a noisier profile.
        days_per_slot = nanmedian(count_valid(med, 1).astype(np.float64), -1)
        # Only the part of the profile that survived shrinkage carries its estimation noise into the baseline.
        between = np.nan_to_num(nanmad_sd(flat, -1), nan=0.0) * profile_inflation(days_per_slot, weight)
        between *= spread_upper(count_valid(flat, -1))
        scale = np.maximum(np.hypot(h.within_sd(), between), o["scale_floor"])
        ok = (good_days >= o["min_days"]) & ~np.isnan(level0)
        return {"level": level0 + shift, "hod": hod, "dow": dow, "scale": scale, "n_ref": h.typical_count(),
                "ok": ok}  # fmt: skip

    @staticmethod
    def _shrink(hod: np.ndarray, centered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shrink hour-of-day effects toward 0 by how much of their spread is estimation noise (James-Stein).

        Returns the shrunk effects and the weight [S] they were multiplied by.

        An hourly effect is a median over m days, with noise variance ≈ (π/2)σ²/m; on a series without a daily
        cycle (or with few days) the raw effects are mostly that noise, and would be baked into the baseline.
        """
        sigma = np.nan_to_num(nanmad_sd((centered - hod[:, None, :]).reshape(len(hod), -1), -1), nan=0.0)
        m = np.maximum(nanmedian(count_valid(centered, 1).astype(np.float64), -1), 1.0)
        noise = 1.5708 * sigma**2 / m * m / np.maximum(m - 1.0, 1.0)  # in-sample residuals understate σ
        signal = np.maximum(np.mean(hod**2, axis=1) - noise, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = np.where(signal + noise > 0, signal / (signal + noise), 1.0)
        return hod * weight[:, None], weight

    def _dow_effect(self, h: History, resid: np.ndarray, good_days: np.ndarray) -> np.ndarray:
        n, spd = resid.shape[0], resid.shape[2]
        per_day = nanmedian(resid, -1, min_count=max(1, spd // 4))  # [S, D]
        day_dow = day_of_week(h.start_s + DAY_S * np.arange(h.days))
        dow = np.zeros((n, 7))
        for j in range(7):  # seven small medians; the series axis stays vectorized
            if np.any(day_dow == j):
                dow[:, j] = np.nan_to_num(nanmedian(per_day[:, day_dow == j], -1), nan=0.0)
        dow[good_days < self.options["dow_min_days"]] = 0.0
        return dow

    def _expected(self, arrays: dict[str, np.ndarray], ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spd = arrays["hod"].shape[1]
        slot = (ts % DAY_S) * spd // DAY_S
        center = arrays["level"][:, None] + arrays["hod"][:, slot] + arrays["dow"][:, day_of_week(ts)]
        return center, np.broadcast_to(arrays["scale"][:, None], center.shape).copy()
