"""What a detection pass stored, as plain JSON-able rows: the check that a speed-up changed no result.

Episodes, regressions and baselines are read back without their ``updated_at`` (the wall clock of the run), sorted
by their keys; everything else, every float at full precision, is part of the snapshot. Used by the golden test
(``tests/test_nightly_equivalence.py``) and by ``benchmarks/nightly_compare.py``, which loads this file by path
(its child process imports another version's ``spanprism``): so this module imports nothing from ``spanprism``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import orjson

_TABLES = {
    "episodes": "id",
    "regressions": "id",
    "baselines": "series_key, metric",
}


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
