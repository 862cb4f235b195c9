"""List a series as soon as its first call is stored, not at the next attribution pass (up to 5 minutes later).

The OTLP writer hands each committed group of calls here. Series already seen by this process cost one Arrow
group-by of the batch and a set lookup; only calls of a series not seen yet trigger
``attribution.store.rollups.register_series`` (an upsert into ``series`` over the calls' few minutes). A failure
is logged, never raised: the next rollup pass registers the series anyway, and ingest must not fail for this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.attribution.store.rollup_sql import RollupConfig
from spanprism.attribution.store.rollups import register_series

log = logging.getLogger("spanprism.ingest")
#: Seen series kept in memory at most (a safety bound: re-registering a known series is harmless).
MAX_KNOWN = 100_000


class NewSeries:
    """The series this process has already registered, and the registration of new ones."""

    def __init__(self, config: RollupConfig | None = None) -> None:
        self.columns = list((config or RollupConfig()).series_columns)
        self.config = config or RollupConfig()
        self.known: set[tuple] = set()

    def _unseen(self, calls: pa.Table) -> tuple[list[tuple], object, object]:
        if calls.num_rows == 0 or any(c not in calls.column_names for c in [*self.columns, "start_time"]):
            return [], None, None
        # The usual group holds only series seen before: their key tuples straight from the columns cost half
        # the group-by (0.37 vs 0.73 ms a 500-span body, measured), which then runs only when there is something new.
        if set(zip(*(calls.column(c).to_pylist() for c in self.columns), strict=True)) <= self.known:
            return [], None, None
        groups = calls.select([*self.columns, "start_time"]).group_by(self.columns)
        rows = groups.aggregate([("start_time", "min"), ("start_time", "max")]).to_pylist()
        fresh = [r for r in rows if tuple(r[c] for c in self.columns) not in self.known]
        if not fresh:
            return [], None, None
        lo = pc.min(pa.array([r["start_time_min"] for r in fresh])).as_py()
        hi = pc.max(pa.array([r["start_time_max"] for r in fresh])).as_py()
        return [tuple(r[c] for c in self.columns) for r in fresh], lo, hi

    def register(self, cur: duckdb.DuckDBPyConnection, tables: Sequence[pa.Table]) -> int:
        """Register the series of ``tables`` not seen yet (their calls are already committed); returns how many."""
        try:
            found = [self._unseen(t) for t in tables]
            keys = [k for ks, _, _ in found for k in ks]
            if not keys:
                return 0
            lo = min(lo for ks, lo, _ in found if ks)
            hi = max(hi for ks, _, hi in found if ks)
            register_series(cur, lo, hi, config=self.config)
        except Exception:  # the rollup pass registers it anyway; ingest must not fail here
            log.exception("registering new series failed")
            return 0
        if len(self.known) > MAX_KNOWN:
            self.known.clear()
        self.known.update(keys)
        return len(keys)
