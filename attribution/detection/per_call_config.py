"""The settings of the per-call test: which series it watches, its allowance, false-alarm budget and timing.

Read by the choice of series (:mod:`.per_call_series`), the test's statistics (:mod:`.per_call_stats`) and the
episodes it assembles (:mod:`.per_call`); the method is described in :mod:`.per_call`.
"""

from __future__ import annotations

from dataclasses import dataclass

from spanprism.attribution.baselines.base import DAY_S


@dataclass(frozen=True)
class PerCallConfig:
    """Which series are tested per call, and the test's allowance, false-alarm budget and timing."""

    sparse_below: float = 60.0  # typical calls per hourly bucket under which a series is tested per call (0: off)
    bursty_dispersion: float = 1.5  # hourly arrivals this over-dispersed (× Poisson) also test a busier series (0: off)
    bursty_below: float = 240.0  # ... when it typically has fewer calls an hour (its 5-minute buckets are too sparse)
    k: float = 0.25  # allowance per call, in sd of the standardized residual (optimal for a 0.5 sd shift)
    clip: float = 3.0  # residuals are clipped to ±clip robust sd before the CUSUM
    false_alarms_per_week: float = 0.01  # budget per series and family and week (sets h per series)
    min_calls: int = 10  # calls in the CUSUM run behind an alarm
    min_change_pct: float = 10.0  # mean change over the run, below which nothing opens
    min_baseline_calls: int = 40  # a day is scored only against a baseline of at least this many calls
    lookback_days: int = 7
    resolve_calls: int = 20  # calm window: calls whose mean residual must fall below resolve_z
    resolve_z: float = 0.5
    idle_s: int = 4 * 3600  # after this long without a call, ...
    resolve_calls_after_idle: int = 5  # ... this many calls back decide whether the episode is over
    accept_after_s: int = DAY_S  # settle period, as in the bucket detector
    raw_budget_share: float = 0.1  # share of the budget for the raw (not token-adjusted) test
    scale_floor: float = 0.02  # ln units: a floor on the robust sd of a very steady series
    batch_s: int = 3600  # batch length of the long-run variance estimate
    max_inflation: float = 10.0  # cap of the long-run / per-call variance ratio
    max_baseline_calls: int = 1500  # a baseline window is subsampled evenly down to about this many calls
    confirm_z: float = 3.5  # the whole episode's mean shift, in long-run standard errors, an episode must reach
