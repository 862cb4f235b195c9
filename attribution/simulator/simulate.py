"""Public entry point of the seeded workload simulator with injected, labelled regression causes.

Usage::

    from spanprism.attribution.simulator.simulate import SimulationConfig, simulate, write_labels
    result = simulate(SimulationConfig(seed=7, days=3, series=12))
    result.calls    # pyarrow.Table conforming to spanprism.models.schema.LLM_CALLS_SCHEMA
    result.labels   # one dict per injected episode and per benign window (label "none")
    result.series   # per-series configuration
    write_labels("labels.jsonl", result.labels)

Users' habits (idle hours, bursts, late starts, own-size drift and steps: ``habits.py``) are off by default; named
workload presets that switch them on live in ``presets.py``.

The workload is real material rescaled (``workload.py``: Mooncake prompts, prefix sharing and burstiness, LLMPerf
latency noise); the latency and prompt-cache physics live in ``physics.py``; families, magnitudes and the
scheduling rules in ``scenarios.py``. Same seed and config give byte-identical calls and labels; all randomness
flows from one ``numpy.random.SeedSequence(seed)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from spanprism.attribution.simulator.catalog import SeriesSpec, TraceStats, make_series
from spanprism.attribution.simulator.habits import (
    MIN_STEP,
    WEEKEND_MODES,
    HabitConfig,
    SeriesHabits,
    SizeStep,
    active_share,
    plan_habits,
)
from spanprism.attribution.simulator.output import episode_label, series_table, step_label
from spanprism.attribution.simulator.scenarios import FAMILIES, FAMILY_SPECS, STRENGTHS, Episode
from spanprism.attribution.simulator.schedule import EPISODES_PER_DAY, Calendar, Usable, place_steps, schedule
from spanprism.attribution.simulator.series import generate_calls
from spanprism.attribution.simulator.workload import prompt_trace
from spanprism.models.schema import LLM_CALLS_SCHEMA

__all__ = ["FAMILIES", "SimulationConfig", "SimulationResult", "simulate", "write_labels"]


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``families=None`` means a balanced mix of every family in :data:`FAMILIES`."""

    seed: int = 7
    days: float = 3.0
    series: int = 12
    families: tuple[str, ...] | None = None
    start: str = "2026-10-01T00:00:00Z"
    #: Series mean rates are log-uniform over this range (calls/s before seasonality).
    rate_min: float = 0.02
    rate_max: float = 5.0
    #: Clean history before the first episode of any series.
    clean_days: float = 1.0
    #: Restrict magnitudes to these thirds of each family's range (None: all of "subtle", "moderate", "strong").
    strengths: tuple[str, ...] | None = None
    #: Episodes per series per post-clean day the scheduler aims at (users' workloads: far fewer).
    episodes_per_day: float = EPISODES_PER_DAY
    # Users' habits (habits.py); every default leaves the output byte-identical to a run without them.
    #: Series are idle (zero calls) outside a daily window of 9-15 h around their peak hour.
    idle_nights: bool = False
    #: "none", "partial" (a ~40 % weekend window) or "full" (idle all weekend).
    idle_weekends: str = "none"
    #: Bursts (3-30 min at 3-10x the rate) per series and day.
    bursts_per_day: float = 0.0
    #: Share of series whose first call is mid-window, with ``late_history_days`` of history before their first cause.
    late_start_share: float = 0.0
    late_history_days: tuple[float, float] = (0.75, 6.0)
    #: Stationary sd of the slow log-space random walk of each series' own prompt and output sizes.
    size_drift: float = 0.0
    #: Persistent >= 25 % steps of a series' own prompt or output size, per series and week (labelled).
    size_steps_per_week: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "late_history_days", tuple(float(x) for x in self.late_history_days))
        if self.idle_weekends not in WEEKEND_MODES:
            raise ValueError(f"idle_weekends must be one of {WEEKEND_MODES}")
        lo, hi = self.late_history_days
        if not 0 < lo <= hi or not 0 <= self.late_start_share <= 1 or self.episodes_per_day <= 0:
            raise ValueError("need 0 < late_history_days[0] <= [1], 0 <= late_start_share <= 1, episodes_per_day > 0")
        if min(self.bursts_per_day, self.size_drift, self.size_steps_per_week) < 0:
            raise ValueError("bursts_per_day, size_drift and size_steps_per_week must be >= 0")
        if self.strengths is not None:
            object.__setattr__(self, "strengths", tuple(self.strengths))
            if not self.strengths or set(self.strengths) - set(STRENGTHS):
                raise ValueError(f"strengths must be a non-empty subset of {STRENGTHS}")
        if self.families is not None:
            object.__setattr__(self, "families", tuple(self.families))
            unknown = sorted(set(self.families) - set(FAMILIES))
            if unknown:
                raise ValueError(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
        if self.days <= 0 or self.series <= 0 or not 0 < self.rate_min <= self.rate_max:
            raise ValueError("days and series must be positive and 0 < rate_min <= rate_max")

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable); :meth:`from_dict` inverts it."""
        out = asdict(self)
        out["families"] = list(self.families) if self.families is not None else None
        out["strengths"] = list(self.strengths) if self.strengths is not None else None
        out["late_history_days"] = list(self.late_history_days)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SimulationConfig:
        """Build from :meth:`to_dict` output (unknown keys are an error)."""
        data = dict(data)
        for key in ("families", "strengths", "late_history_days"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    @property
    def habits(self) -> HabitConfig:
        """The habit switches of this config."""
        # Same-named fields: a habit added to HabitConfig is carried over once it is a field here too.
        return HabitConfig(**{f.name: getattr(self, f.name) for f in fields(HabitConfig)})

    @property
    def epoch_s(self) -> float:
        """Start as UNIX seconds."""
        return datetime.fromisoformat(self.start.replace("Z", "+00:00")).astimezone(UTC).timestamp()


@dataclass
class SimulationResult:
    """Simulated calls, ground-truth labels and series configurations."""

    config: SimulationConfig
    calls: pa.Table
    labels: list[dict] = field(default_factory=list)
    series: list[dict] = field(default_factory=list)


def _hints(rng: np.random.Generator, families: list[str]) -> list[frozenset[str]]:
    """Requirement sets to build series for, so that every requested family has an eligible series."""
    needs = sorted({FAMILY_SPECS[f].needs for f in families if FAMILY_SPECS[f].needs}, key=sorted)
    rng.shuffle(needs)
    return needs or [frozenset()]


def simulate(config: SimulationConfig) -> SimulationResult:
    """Run the simulation described by ``config`` (deterministic in ``config``)."""
    root = np.random.SeedSequence(config.seed)
    spec_seed, sched_seed, series_seed = root.spawn(3)
    families = list(config.families) if config.families is not None else list(FAMILIES)
    spec_rng = np.random.default_rng(spec_seed)
    traces = {name: prompt_trace(name) for name in ("conversation", "synthetic")}
    stats = {
        k: TraceStats(v.size, float(np.median(v.user_tokens)), float(np.median(v.output_tokens)))
        for k, v in traces.items()
    }
    specs: list[SeriesSpec] = make_series(
        spec_rng, config.series, _hints(spec_rng, families), (config.rate_min, config.rate_max), stats
    )
    total_s = config.days * 86400.0
    clean_s = config.clean_days * 86400.0
    habits: list[SeriesHabits] | None = None
    clean: float | list[float] = clean_s
    usable = None
    if config.habits.active:  # spawned after the three streams above, so those stay as they were
        habits_seed, steps_seed = root.spawn(2)
        habits = plan_habits(config.habits, len(specs), total_s, habits_seed)
        clean = [h.clean_s if h.clean_s is not None else clean_s for h in habits]
        usable = _usable(habits, specs, config.epoch_s)
    episodes = schedule(
        np.random.default_rng(sched_seed),
        specs,
        families,
        clean,
        total_s,
        config.strengths or STRENGTHS,
        usable=usable,
        per_day=config.episodes_per_day,
    )
    if habits is not None and config.size_steps_per_week > 0:
        _add_steps(np.random.default_rng(steps_seed), habits, Calendar(len(specs), clean, total_s, usable),
                   episodes, config.size_steps_per_week)  # fmt: skip
    tables, labels = [], []
    for spec, seed in zip(specs, series_seed.spawn(len(specs)), strict=True):
        mine = [e for e in episodes if e.series_index == spec.index]
        sim_seed, table_seed = seed.spawn(2)
        own = habits[spec.index] if habits is not None else None
        calls = generate_calls(spec, mine, total_s, config.epoch_s, sim_seed, own)
        tables.append(series_table(spec, calls, config.epoch_s, np.random.default_rng(table_seed)))
        # With idle hours the equal-length window before an onset may be empty: measure against the last day.
        before_s = 86400.0 if habits is not None else None
        labels.extend(
            (e.start_s, spec.index, episode_label(spec, calls, e, config.epoch_s, before_s=before_s)) for e in mine
        )
        for step in own.steps if own is not None else []:
            labels.append((step.start_s, spec.index, step_label(spec, calls, step, config.epoch_s)))
    calls_table = pa.concat_tables(tables) if tables else LLM_CALLS_SCHEMA.empty_table()
    ordered = [lab for _, _, lab in sorted(labels, key=lambda x: (x[0], x[1]))]
    series = [s.to_dict() for s in specs]
    for entry, own in zip(series, habits or [], strict=False):
        entry["habits"] = own.summary()
    return SimulationResult(config=config, calls=calls_table, labels=ordered, series=series)


def _usable(habits: list[SeriesHabits], specs: list[SeriesSpec], epoch_s: float) -> Usable:
    """Causes go where the series has traffic: at least 75 % of an episode's minutes must be active ones."""

    def usable(i: int, start: float, end: float) -> bool:
        return active_share(habits[i], specs[i], epoch_s, start, end) >= 0.75

    return usable


def _add_steps(
    rng: np.random.Generator, habits: list[SeriesHabits], cal: Calendar, episodes: list[Episode], per_week: float
) -> None:
    """Place own-size steps clear of every episode and draw their token kind and size (>= 25 % either way)."""
    for i, start, ramp in place_steps(rng, cal, episodes, per_week, len(habits)):
        token = "input" if rng.random() < 0.5 else "output"
        if rng.random() < 0.8:  # mostly growth: features are added more often than removed
            change = float(np.exp(rng.uniform(np.log(1.0 + MIN_STEP), np.log(2.0)))) - 1.0
        else:
            change = -float(rng.uniform(MIN_STEP, 0.45))
        step_id = f"{int(rng.integers(0, 2**63)):016x}"
        habits[i].steps.append(SizeStep(start, ramp, token, round(change, 4), step_id))


def write_labels(path: str | Path, labels: list[dict]) -> Path:
    """Write ``labels`` as JSON lines (sorted keys, so equal labels give equal bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for lab in labels:
            fh.write(json.dumps(lab, sort_keys=True, ensure_ascii=False) + "\n")
    return path
