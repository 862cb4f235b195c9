"""Rolling median / MAD baseline: the fallback for short or sparse history.

The center is the median of the slot medians (hourly, or per bucket for coarse grains) over the trailing
window; the scale combines the spread between slots (MAD) with the bucket-to-bucket noise inside a slot. It
knows nothing about seasonality, so on a diurnal series its scale is wider (fewer, not more, alarms).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from spanprism.attribution.baselines.base import DAY_S, Baseline, History
from spanprism.attribution.baselines.robust import count_valid, nanmad_sd, nanmedian, profile_inflation, spread_upper


class RollingBaseline(Baseline):
    """Constant level = trailing median; scale = robust spread. Needs only a few hours of data."""

    name: ClassVar[str] = "rolling"
    version: ClassVar[int] = 1
    defaults: ClassVar[dict[str, float]] = {"window_hours": 24.0, "min_slots": 6.0, "scale_floor": 0.01}

    def _fit(self, history: History) -> dict[str, np.ndarray]:
        days = max(1, math.ceil(self.options["window_hours"] * 3600 / DAY_S))
        recent = history.window(history.days - days, history.days)
        slot_s = history.per_slot * history.grain_s
        n_slots = max(1, int(self.options["window_hours"] * 3600 // slot_s))
        med = recent.slot_stats()[0].reshape(recent.values.shape[0], -1)[:, -n_slots:]
        level = nanmedian(med, -1)
        n_slots_valid = count_valid(med, -1)
        between = np.nan_to_num(nanmad_sd(med, -1), nan=0.0)
        between *= profile_inflation(n_slots_valid) * spread_upper(n_slots_valid)
        scale = np.maximum(np.hypot(recent.within_sd(), between), self.options["scale_floor"])
        ok = (count_valid(med, -1) >= self.options["min_slots"]) & ~np.isnan(level)
        return {"level": level, "scale": scale, "n_ref": recent.typical_count(), "ok": ok}

    def _expected(self, arrays: dict[str, np.ndarray], ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = (len(arrays["ok"]), len(ts))
        return (np.broadcast_to(arrays["level"][:, None], shape).copy(),
                np.broadcast_to(arrays["scale"][:, None], shape).copy())  # fmt: skip
