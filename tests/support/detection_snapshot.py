"""What a detection pass stored, as plain JSON-able rows: the check that a speed-up changed no result.

Episodes, regressions and baselines are read back without their ``updated_at`` (the wall clock of the run),
sorted by their keys; everything else, every float at full precision, is part of the snapshot.
"""

from __future__ import annotations

import math
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from spanprism.api.storage.connect import open_db
from spanprism.attribution.simulator.shifts import insert_calls
from spanprism.attribution.simulator.simulate import SimulationConfig, simulate

#: A week and a half of a simulated fleet from 5 calls an hour to 2 calls a second: series tested per call, on
#: hourly buckets and on 5-minute buckets, seasonal and day-of-week baselines, idle nights and own-size drift.
SCENARIO = SimulationConfig(seed=1107, days=9.0, series=10, rate_min=0.0014, rate_max=2.0, clean_days=2.0,
                            idle_nights=True, bursts_per_day=1.0, size_drift=0.1)  # fmt: skip
_TABLES = {
    "episodes": "id",
    "regressions": "id",
    "baselines": "series_key, metric",
}


def scenario_db(path: Path | None = None):
    """A migrated DuckDB file whose llm_calls holds the :data:`SCENARIO` calls."""
    calls = simulate(SCENARIO).calls
    con = open_db(path or Path(tempfile.mkdtemp()) / "scenario.duckdb")
    insert_calls(con, calls)
    return con


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def snapshot(con) -> dict[str, list[dict[str, Any]]]:
    """Every stored episode, regression and baseline (JSON columns parsed), ``updated_at`` left out."""
    out: dict[str, list[dict[str, Any]]] = {}
    for table, order in _TABLES.items():
        cur = con.execute(f"SELECT * EXCLUDE (updated_at) FROM {table} ORDER BY {order}")
        names = [d[0] for d in cur.description]
        rows = []
        for row in cur.fetchall():
            item = {n: _plain(v) for n, v in zip(names, row, strict=True)}
            for n in ("stats", "metrics", "params"):
                if isinstance(item.get(n), str):
                    item[n] = orjson.loads(item[n])
            rows.append(item)
        out[table] = rows
    return out


def differences(got: Any, want: Any, where: str = "", rel: float = 0.0) -> list[str]:
    """Paths where ``got`` and ``want`` differ (floats within ``rel`` relative count as equal)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}.{k}: missing" for k in want if k not in got]
        out += [f"{where}.{k}: unexpected" for k in got if k not in want]
        for k in want:
            if k in got:
                out += differences(got[k], want[k], f"{where}.{k}", rel)
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} rows, expected {len(want)}"]
        return [
            d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in differences(g, w, f"{where}[{i}]", rel)
        ]
    if isinstance(want, float) and isinstance(got, float | int) and not isinstance(got, bool):
        if got == want or abs(got - want) <= rel * max(abs(got), abs(want)):
            return []
    elif got == want:
        return []
    return [f"{where}: {got!r} != {want!r}"]
