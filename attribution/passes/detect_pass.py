"""The attribution job: rollups → baselines → detection → regression records, idempotent.

``run_attribution(con)`` with no range covers all stored data: it recomputes every episode from the first
bucket (the nightly rebuild). With ``since`` it replays detection from the UTC midnight before ``since`` (moved
earlier to the start of any regression still open or ending after it, so a regression is never kept half), with
baselines fitted on the history before each day; episodes and regressions of the replayed span are replaced.
Ids are hashes of series key, family and onset, so a re-run over the same data yields the same ids and an open
episode that continues keeps its id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import numpy as np
import pandas as pd

from spanprism.attribution.baselines import ParamsBatch
from spanprism.attribution.baselines.base import DAY_S
from spanprism.attribution.detection.episodes import (
    DetectionConfig,
    Episode,
    build_panel,
    detect_family,
    grain_plan,
    prefer_finer,
    spans_from_episodes,
)
from spanprism.attribution.detection.per_call import detect_calls
from spanprism.attribution.detection.per_call_config import PerCallConfig
from spanprism.attribution.detection.per_call_series import per_call_keys
from spanprism.attribution.store import calls as stored_calls
from spanprism.attribution.store import state as store
from spanprism.attribution.store.records import group_regressions
from spanprism.attribution.store.rollup_sql import SERIES_NAME_COLUMNS, RollupConfig
from spanprism.attribution.store.rollups import refresh_rollups
from spanprism.models.state import StateCursor, StateUnit
from spanprism.models.transaction import unit_on


@dataclass
class AttributeSummary:
    """What one run did: counts and seconds per stage."""

    series: int = 0
    rollup_rows: int = 0
    buckets_evaluated: int = 0
    episodes_open: int = 0
    episodes_resolved: int = 0
    regressions_open: int = 0
    regressions_resolved: int = 0
    baselines_stored: int = 0
    replay_from: datetime | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _seconds(value: datetime | None) -> int | None:
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return int(value.timestamp())


Fitted = list[tuple[str, tuple[str, ...], ParamsBatch]]


def _detect(con: duckdb.DuckDBPyConnection, results: StateCursor, config: DetectionConfig, replay_s: int,
            end_s: int, summary: AttributeSummary, per_call: tuple[PerCallConfig, tuple[str, ...]],
            keys: Sequence[str] | None) -> tuple[list[Episode], Fitted]:  # fmt: skip
    load_s = replay_s - config.lookback_days * DAY_S
    frame, all_keys = store.load_rollups(con, start_s=load_s, end_s=end_s, grains=config.grains, keys=keys)
    prior = store.load_episodes(results, keys)
    episodes: list[Episode] = []
    fitted: Fitted = []
    if frame.empty:
        return episodes, fitted
    day_end = -(-end_s // DAY_S) * DAY_S
    for family in config.families:
        for grain, (primary, extra) in grain_plan(frame, family, config).items():
            panel = build_panel(frame, family, grain, primary + extra, all_keys, load_s, day_end, config.min_calls,
                                config.min_tail_calls)  # fmt: skip
            eval_from = (replay_s - load_s) // grain
            found, last = detect_family(panel, config, eval_from_col=eval_from,
                                        prior=spans_from_episodes(panel, prior))  # fmt: skip
            episodes.extend(found)
            # Stored baselines are those of each series' primary grain (one row per series and statistic).
            rows = np.isin(sorted(primary + extra), primary) if extra else None  # panel rows are sorted sids
            fitted.extend((stat, panel.keys, _only(batch, rows)) for stat, batches in last.items() for batch in batches)
            some = next(iter(panel.stats.values()))
            summary.buckets_evaluated += int((~np.isnan(some[:, eval_from:])).sum())
    episodes.extend(_detect_per_call(con, frame, all_keys, prior, replay_s, end_s, *per_call))
    return prefer_finer(episodes), fitted  # per-call episodes (grain 0) win over overlapping bucket ones


def _detect_per_call(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, keys: list[str], prior: list[Episode],
                     replay_s: int, end_s: int, config: PerCallConfig,
                     series_columns: tuple[str, ...]) -> list[Episode]:  # fmt: skip
    """Episodes of the series too sparse for buckets, and of those too bursty for them, tested call by call (one
    query for all of them)."""
    sparse, bursty = per_call_keys(frame, keys, "n_ok", config)
    if not sparse and not bursty:
        return []
    naming = [c for c in series_columns if c in SERIES_NAME_COLUMNS]
    calls = stored_calls.load_calls(con, sorted({*sparse, *bursty}), start_s=replay_s - config.lookback_days * DAY_S,
                                    end_s=end_s, series_columns=naming)  # fmt: skip
    return detect_calls(calls, eval_from_s=replay_s, horizon_s=end_s, config=config, prior=prior,
                        adjusted_only=set(bursty))  # fmt: skip


def _only(batch: ParamsBatch, rows: np.ndarray | None) -> ParamsBatch:
    """The batch with ``ok`` cleared outside ``rows`` (so only those series' parameters are stored)."""
    if rows is None:
        return batch
    arrays = dict(batch.arrays)
    arrays["ok"] = arrays["ok"] & rows
    return ParamsBatch(batch.kind, batch.version, batch.grain_s, arrays)


def run_attribution(con: duckdb.DuckDBPyConnection, *, since: datetime | None = None, until: datetime | None = None,
                    config: DetectionConfig | None = None,
                    rollup_config: RollupConfig | None = None,
                    per_call: PerCallConfig | None = None,
                    results: StateUnit | None = None,
                    keys: Sequence[str] | None = None,
                    refresh: bool = True) -> AttributeSummary:  # fmt: skip
    """Refresh rollups, fit baselines, detect episodes and store regressions for [since, until).

    Series whose hourly buckets are too sparse are also tested call by call (``per_call``; see
    :mod:`spanprism.attribution.detection.per_call`). ``results`` opens the unit of work where baselines, episodes
    and regressions live (PostgreSQL with ``SPANPRISM_STATE_URL``); None = the DuckDB file of ``con``. ``keys``
    detects (and replaces the results of) those series only: a worker's shards; None = every series. ``refresh=False``
    skips the rollup refresh (a worker refreshes its rollup cache once for all the shards it then detects)."""
    config = config or DetectionConfig()
    rollup_config = rollup_config or RollupConfig(grains=config.grains)
    if set(config.grains) - set(rollup_config.grains):
        raise ValueError("detection grains must be rollup grains")
    summary = AttributeSummary()
    t0 = time.perf_counter()
    if refresh:
        refreshed = refresh_rollups(con, since, until, config=rollup_config)
        summary.rollup_rows, summary.series = refreshed.rows_written, refreshed.series
    elif keys is not None:
        summary.series = len(keys)
    summary.timings["rollups"] = time.perf_counter() - t0
    bounds = store.rollup_bounds(con, rollup_config.base_grain)
    if bounds is None:
        return summary
    first_s, last_s = bounds
    since_s, until_s = _seconds(since), _seconds(until)
    start_s = max(first_s, since_s) if since_s is not None else first_s
    end_s = min(last_s, until_s) if until_s is not None else last_s
    with (results or unit_on(con))() as rc:  # one transaction: readers never see half a run
        replay_s = store.replay_start(rc, start_s // DAY_S * DAY_S, keys) // DAY_S * DAY_S
        summary.replay_from = datetime.fromtimestamp(replay_s, UTC)
        store.delete_from(rc, replay_s, keys)
        t1 = time.perf_counter()
        episodes, fitted = _detect(con, rc, config, replay_s, end_s, summary,
                                   (per_call or PerCallConfig(), rollup_config.series_columns), keys)  # fmt: skip
        summary.timings["baselines_and_detection"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        now = datetime.now(UTC)
        regressions = group_regressions(episodes, store.series_names(con), merge_gap_s=config.merge_gap_s, now=now)
        store.write_episodes(rc, episodes, now)
        store.write_regressions(rc, regressions)
        summary.baselines_stored = store.write_baselines(rc, fitted, now)
    summary.timings["store"] = time.perf_counter() - t2
    summary.episodes_open = sum(e.end is None for e in episodes)
    summary.episodes_resolved = len(episodes) - summary.episodes_open
    summary.regressions_open = sum(r["status"] == "open" for r in regressions)
    summary.regressions_resolved = len(regressions) - summary.regressions_open
    summary.timings["total"] = time.perf_counter() - t0
    return summary
