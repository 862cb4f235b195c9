"""What users' traffic does that a steady, always-on service does not: idle hours, bursts, late starts, drift, steps.

Issue 11 saw detection fail on workloads of 2-200 calls an hour with idle nights and weekends, bursts, series
that began mid-window and prompt/output sizes that wander. Every habit here is off by default (the simulator's
output then stays byte-identical); :class:`HabitConfig` switches them on, :func:`plan_habits` draws one
:class:`SeriesHabits` per series from its own generator (spawned apart from every other stream of the simulation).

- **Idle hours**: a series is active in a daily window (9-15 h around its peak hour) and idle — zero calls — outside
  it; at weekends the window shrinks to ~40 % (``partial``) or the series is idle all day (``full``).
- **Bursts**: a few times a day the rate jumps to 3-10x for 3-30 minutes (a batch job, a retry storm, a demo).
- **Late starts**: a share of series make their first call mid-window, with 0.75-6 days of history before their
  first cause.
- **Drift**: the series' own prompt (user part) and output sizes follow a slow mean-reverting random walk in log
  space (stationary sd :attr:`HabitConfig.size_drift`, time scale 3 days): too slow and small to be a cause.
- **Steps**: occasional persistent changes of >= 25 % of the series' own prompt or output size (a new template, a
  new feature), labelled in ``labels.jsonl`` as own-size changes (``kind = "own_size_change"``) so scoring can tell
  a report they explain from noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spanprism.attribution.simulator.catalog import SeriesSpec

DAY = 86400.0
MINUTE = 60.0
#: Time scale (s) of the drift's mean reversion: sizes wander over days, not hours.
DRIFT_TAU_S = 3 * DAY
#: Drift is evaluated on this grid (s) and interpolated per call.
DRIFT_STEP_S = 3600.0
#: Own-size steps are at least this large (relative change of the median size), by construction.
MIN_STEP = 0.25
WEEKEND_MODES = ("none", "partial", "full")


@dataclass(frozen=True)
class HabitConfig:
    """Which habits are on (the defaults switch every one off)."""

    idle_nights: bool = False
    idle_weekends: str = "none"
    bursts_per_day: float = 0.0
    late_start_share: float = 0.0
    late_history_days: tuple[float, float] = (0.75, 6.0)
    size_drift: float = 0.0
    size_steps_per_week: float = 0.0

    @property
    def active(self) -> bool:
        """Is any habit on?"""
        return (
            self.idle_nights
            or self.idle_weekends != "none"
            or self.bursts_per_day > 0
            or self.late_start_share > 0
            or self.size_drift > 0
            or self.size_steps_per_week > 0
        )


@dataclass(frozen=True)
class SizeStep:
    """A persistent change of the series' own ``token`` ("input": user prompt part, "output") size by ``change``."""

    start_s: float
    ramp_s: float
    token: str
    change: float  # relative: +0.4 = 40 % larger from then on
    step_id: str

    def log_weight(self, t: np.ndarray) -> np.ndarray:
        """log(1 + change) scaled by the ramp progress at times ``t`` (0 before, full after the ramp)."""
        ramp = np.clip((t - self.start_s) / self.ramp_s, 0.0, 1.0) if self.ramp_s > 0 else (t >= self.start_s) * 1.0
        return np.log1p(self.change) * ramp


@dataclass
class SeriesHabits:
    """One series' drawn habits: its activity shape, bursts, first call and own-size path."""

    start_s: float = 0.0
    clean_s: float | None = None  # earliest first cause; None = the simulation's clean history
    window_h: float = 24.0  # active hours per weekday (24 = never idle at night)
    weekend: str = "none"
    bursts: list[tuple[float, float, float]] = field(default_factory=list)  # (start s, length s, factor)
    drift_user: np.ndarray | None = None  # log multiplier on the DRIFT_STEP_S grid
    drift_out: np.ndarray | None = None
    steps: list[SizeStep] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-serialisable description (added to the series' configuration in the simulation result)."""
        return {
            "start_s": self.start_s,
            "clean_s": self.clean_s,
            "window_h": round(self.window_h, 3),
            "weekend": self.weekend,
            "bursts": [list(b) for b in self.bursts],
            "steps": [
                {"start_s": st.start_s, "ramp_s": st.ramp_s, "token": st.token, "change": st.change}
                for st in self.steps
            ],
        }

    def activity(self, spec: SeriesSpec, minutes: np.ndarray, epoch_s: float) -> np.ndarray:
        """Per-minute rate multiplier: 0 when idle or before the first call, the burst factor in a burst, else 1."""
        t_rel = minutes * MINUTE + MINUTE / 2
        t_abs = epoch_s + t_rel
        out = np.ones(minutes.size)
        if self.window_h < 24.0 or self.weekend != "none":
            hour = (t_abs % DAY) / 3600.0
            dist = np.abs((hour - spec.peak_hour_utc + 12.0) % 24.0 - 12.0)  # hours from the daily peak
            weekend = ((np.floor(t_abs / DAY).astype(np.int64) + 3) % 7) >= 5  # Monday = 0
            half = np.where(weekend & (self.weekend == "partial"), 0.2 * self.window_h, 0.5 * self.window_h)
            on = dist < half
            if self.weekend == "full":
                on &= ~weekend
            out *= on
        for start, length, factor in self.bursts:
            out = np.where((t_rel >= start) & (t_rel < start + length), out * factor, out)
        return np.where(t_rel >= self.start_s, out, 0.0)

    def size_multipliers(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(user-part, output) size multipliers of calls at times ``t``: drift times every step so far."""
        logs = {"input": np.zeros(t.size), "output": np.zeros(t.size)}
        grid_t = None
        for token, path in (("input", self.drift_user), ("output", self.drift_out)):
            if path is not None:
                grid_t = np.arange(path.size) * DRIFT_STEP_S if grid_t is None else grid_t
                logs[token] += np.interp(t, grid_t, path)
        for step in self.steps:
            logs[step.token] += step.log_weight(t)
        return np.exp(logs["input"]), np.exp(logs["output"])


def _drift_path(rng: np.random.Generator, sd: float, total_s: float) -> np.ndarray:
    """Mean-reverting (Ornstein-Uhlenbeck) log-size path with stationary sd ``sd``, started at 0."""
    n = int(np.ceil(total_s / DRIFT_STEP_S)) + 2
    a = np.exp(-DRIFT_STEP_S / DRIFT_TAU_S)
    shocks = rng.normal(0.0, sd * np.sqrt(1.0 - a * a), n)
    path = np.zeros(n)
    for k in range(1, n):
        path[k] = a * path[k - 1] + shocks[k]
    return path


def plan_habits(cfg: HabitConfig, n_series: int, total_s: float, seed: np.random.SeedSequence) -> list[SeriesHabits]:
    """Draw every series' habits (activity, bursts, start, drift); steps are placed later (``schedule.place_steps``)."""
    out = []
    for child in seed.spawn(n_series):
        rng = np.random.default_rng(child)
        h = SeriesHabits(weekend=cfg.idle_weekends)
        if cfg.idle_nights:
            h.window_h = float(rng.uniform(9.0, 15.0))
        if cfg.bursts_per_day > 0:
            n = int(rng.poisson(cfg.bursts_per_day * total_s / DAY))
            for _ in range(n):
                length = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0)))) * MINUTE
                factor = float(np.exp(rng.uniform(np.log(3.0), np.log(10.0))))
                h.bursts.append((float(rng.uniform(0.0, total_s - length)), round(length), round(factor, 3)))
        if cfg.late_start_share > 0 and rng.random() < cfg.late_start_share:
            lo, hi = cfg.late_history_days
            history = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * DAY
            # Start somewhere in the first half, but leave at least two days after the history for causes.
            latest = max(0.0, min(total_s / 2, total_s - history - 2 * DAY))
            h.start_s = round(float(rng.uniform(0.0, latest)) / MINUTE) * MINUTE
            h.clean_s = h.start_s + history
        if cfg.size_drift > 0:
            h.drift_user = _drift_path(rng, cfg.size_drift, total_s)
            h.drift_out = _drift_path(rng, cfg.size_drift, total_s)
        out.append(h)
    return out


def active_share(h: SeriesHabits, spec: SeriesSpec, epoch_s: float, start_s: float, end_s: float) -> float:
    """Share of the minutes of [start_s, end_s) in which the series is active (bursts count as active)."""
    minutes = np.arange(int(start_s // MINUTE), int(np.ceil(end_s / MINUTE)))
    if minutes.size == 0:
        return 0.0
    return float((h.activity(spec, minutes, epoch_s) > 0).mean())
