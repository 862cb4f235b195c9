"""The golden test's scenario for the detection snapshot (:mod:`spanprism.attribution.evaluation.snapshot`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from spanprism.api.storage.connect import open_db
from spanprism.attribution.evaluation.snapshot import differences, snapshot
from spanprism.attribution.simulator.shifts import insert_calls
from spanprism.attribution.simulator.simulate import SimulationConfig, simulate

__all__ = ["SCENARIO", "differences", "scenario_db", "snapshot"]

#: A week and a half of a simulated fleet from 5 calls an hour to 2 calls a second: series tested per call, on
#: hourly buckets and on 5-minute buckets, seasonal and day-of-week baselines, idle nights and own-size drift.
SCENARIO = SimulationConfig(seed=1107, days=9.0, series=10, rate_min=0.0014, rate_max=2.0, clean_days=2.0,
                            idle_nights=True, bursts_per_day=1.0, size_drift=0.1)  # fmt: skip


def scenario_db(path: Path | None = None):
    """A migrated DuckDB file whose llm_calls holds the :data:`SCENARIO` calls."""
    calls = simulate(SCENARIO).calls
    con = open_db(path or Path(tempfile.mkdtemp()) / "scenario.duckdb")
    insert_calls(con, calls)
    return con
