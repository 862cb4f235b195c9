"""Public entry point of the seeded workload simulator with injected, labelled regression causes.

Usage::

    from spanprism.attribution.simulator.simulate import SimulationConfig, simulate, write_labels
    result = simulate(SimulationConfig(seed=7, days=3, series=12))
    result.calls    # pyarrow.Table conforming to spanprism.models.schema.LLM_CALLS_SCHEMA
    result.labels   # one dict per injected episode and per benign window (label "none")
    result.series   # per-series configuration
    write_labels("labels.jsonl", result.labels)

The workload is real material rescaled (``workload.py``: Mooncake prompts, prefix sharing and burstiness, LLMPerf
latency noise); the latency and prompt-cache physics live in ``physics.py``; families, magnitudes and the
scheduling rules in ``scenarios.py``. Same seed and config give byte-identical calls and labels; all randomness
flows from one ``numpy.random.SeedSequence(seed)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from spanprism.attribution.simulator.catalog import SeriesSpec, TraceStats, make_series
from spanprism.attribution.simulator.output import episode_label, series_table
from spanprism.attribution.simulator.scenarios import FAMILIES, FAMILY_SPECS, STRENGTHS
from spanprism.attribution.simulator.schedule import schedule
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

    def __post_init__(self) -> None:
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
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SimulationConfig:
        """Build from :meth:`to_dict` output (unknown keys are an error)."""
        data = dict(data)
        for key in ("families", "strengths"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

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
    episodes = schedule(
        np.random.default_rng(sched_seed),
        specs,
        families,
        config.clean_days * 86400.0,
        total_s,
        config.strengths or STRENGTHS,
    )
    tables, labels = [], []
    for spec, seed in zip(specs, series_seed.spawn(len(specs)), strict=True):
        mine = [e for e in episodes if e.series_index == spec.index]
        sim_seed, table_seed = seed.spawn(2)
        calls = generate_calls(spec, mine, total_s, config.epoch_s, sim_seed)
        tables.append(series_table(spec, calls, config.epoch_s, np.random.default_rng(table_seed)))
        labels.extend((e.start_s, spec.index, episode_label(spec, calls, e, config.epoch_s)) for e in mine)
    calls_table = pa.concat_tables(tables) if tables else LLM_CALLS_SCHEMA.empty_table()
    ordered = [lab for _, _, lab in sorted(labels, key=lambda x: (x[0], x[1]))]
    return SimulationResult(config=config, calls=calls_table, labels=ordered, series=[s.to_dict() for s in specs])


def write_labels(path: str | Path, labels: list[dict]) -> Path:
    """Write ``labels`` as JSON lines (sorted keys, so equal labels give equal bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for lab in labels:
            fh.write(json.dumps(lab, sort_keys=True, ensure_ascii=False) + "\n")
    return path
