"""Reading rollups (a DuckDB connection) and writing baselines, episodes and regressions (a state cursor).

All SQL of the detection pipeline lives here (the rollup SQL itself is in :mod:`spanprism.attribution.store.rollups`).
Rollups and series sit with the calls, in the DuckDB file; what detection *produces* (baselines, episodes,
regressions) is results state: a cursor of the DuckDB file by default, of PostgreSQL with ``SPANPRISM_STATE_URL``
(:mod:`spanprism.models.state`), written in SQL both engines accept. Writes of one run happen in one transaction,
so readers never see half a run. Functions taking ``keys`` act on those series only (a worker's shards).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import pandas as pd
import pyarrow as pa

from spanprism.attribution.baselines import ParamsBatch
from spanprism.attribution.detection.episodes import FAMILIES, Episode
from spanprism.models.state import StateCursor, dialect_of, execute_many, key_in
from spanprism.models.times import as_utc

_STATS = [s for stats in FAMILIES.values() for s in stats]


def rollup_bounds(con: duckdb.DuckDBPyConnection, grain_s: int) -> tuple[int, int] | None:
    """(first bucket start, last bucket end) in epoch seconds at ``grain_s``; None without rollups."""
    lo, hi = con.execute(
        "SELECT epoch(min(bucket_start))::BIGINT, epoch(max(bucket_start))::BIGINT FROM series_rollups "
        "WHERE grain_s = ?",
        [grain_s],
    ).fetchall()[0]
    return None if lo is None else (int(lo), int(hi) + grain_s)


def load_rollups(con: duckdb.DuckDBPyConnection, *, start_s: int, end_s: int, grains: Iterable[int],
                 keys: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
    """Rollup rows of the detection statistics in [start_s, end_s), and the sorted series keys (of ``keys`` only
    when given).

    Rows carry ``sid`` (index into the keys) and ``bucket_s`` (epoch seconds): integers, because turning
    millions of key strings into Python objects would cost more than the whole detection.
    """
    grain_list = ", ".join(str(int(g)) for g in grains)
    where = f"grain_s IN ({grain_list}) AND bucket_start >= to_timestamp($lo) AND bucket_start < to_timestamp($hi)"
    params: dict[str, Any] = {"lo": start_s, "hi": end_s}
    if keys is not None:
        where += " AND series_key IN (SELECT unnest($keys))"
        params["keys"] = list(keys)
    found = [r[0] for r in con.execute(
        f"SELECT DISTINCT series_key FROM series_rollups WHERE {where} ORDER BY 1", params).fetchall()]  # fmt: skip
    frame = con.execute(
        f"""SELECT k.sid, grain_s, epoch(bucket_start)::BIGINT AS bucket_s, n_calls - n_errors AS n_ok,
                   n_ttft, n_itl, {", ".join(_STATS)}
            FROM series_rollups
            JOIN (SELECT series_key, (row_number() OVER (ORDER BY series_key) - 1)::INTEGER AS sid
                  FROM (SELECT DISTINCT series_key FROM series_rollups WHERE {where})) k USING (series_key)
            WHERE {where}""",
        params,
    ).df()
    return frame, found


def series_names(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str | None]]:
    """series_key → {service, provider, request_model, operation, tenant}."""
    rows = con.execute("SELECT series_key, service, provider, request_model, operation, tenant FROM series").fetchall()
    cols = ("service", "provider", "request_model", "operation", "tenant")
    return {r[0]: dict(zip(cols, r[1:], strict=True)) for r in rows}


def _keys(cur: StateCursor, column: str, keys: Sequence[str] | None) -> tuple[str, list[Any]]:
    """`` AND column IN keys`` (nothing for None: every series)."""
    if keys is None:
        return "", []
    sql, params = key_in(cur, column, keys)
    return f" AND {sql}", params


def replay_start(cur: StateCursor, since_s: int, keys: Sequence[str] | None = None) -> int:
    """The earliest time a run from ``since_s`` must re-detect: before any regression still open or ending later.

    Regressions touching the replayed range are recomputed whole, so a run never keeps half a regression. ``keys``
    limits the question to those series (a worker's shards); None asks of every series.
    """
    start = since_s
    only, params = _keys(cur, "series_key", keys)
    while True:
        at = datetime.fromtimestamp(start, UTC)
        earlier = cur.execute(
            "SELECT min(start_time) FROM regressions WHERE (end_time IS NULL OR end_time > ?) AND start_time < ?"
            + only,
            [at, at, *params],
        ).fetchall()[0][0]
        if earlier is None or int(as_utc(earlier).timestamp()) >= start:
            return start
        start = int(as_utc(earlier).timestamp())


def delete_from(cur: StateCursor, start_s: int, keys: Sequence[str] | None = None) -> None:
    """Drop regressions (and their episodes) that start at or after ``start_s`` or are still open after it (of the
    series ``keys`` only, when given)."""
    at = datetime.fromtimestamp(start_s, UTC)
    only_r, params = _keys(cur, "series_key", keys)
    doomed = f"SELECT id FROM regressions WHERE (start_time >= ? OR end_time IS NULL OR end_time > ?){only_r}"
    cur.execute(f"DELETE FROM episodes WHERE (regression_id IN ({doomed}) OR start_time >= ?){only_r}",
                [at, at, *params, at, *params])  # fmt: skip
    cur.execute(f"DELETE FROM regressions WHERE id IN ({doomed})", [at, at, *params])


def load_episodes(cur: StateCursor, keys: Sequence[str] | None = None) -> list[Episode]:
    """Every stored episode (of ``keys``; used to mask earlier anomalies from the baselines of a replay)."""
    only, params = _keys(cur, "series_key", keys)
    rows = cur.execute(
        "SELECT id, series_key, family, metric, grain_s, start_time, detected_at, peak_time, end_time, baseline,"
        " observed, change_pct, peak_change_pct, n_buckets, stats, regression_id, status FROM episodes WHERE TRUE"
        + only,
        params,
    ).fetchall()
    return [
        Episode(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            as_utc(r[5]),
            as_utc(r[6]),
            as_utc(r[7]),
            as_utc(r[8]),
            *r[9:14],
            orjson.loads(r[14]),
            r[15],
            accepted=r[16] == "accepted",
        )
        for r in rows
    ]


def _upsert(table: str, cols: Sequence[str], key: Sequence[str]) -> str:
    """Insert, or replace the row with the same ``key``: ``ON CONFLICT … DO UPDATE`` reads the same on both engines."""
    rest = [c for c in cols if c not in key]
    updates = ", ".join(f"{c} = excluded.{c}" for c in rest)
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")  # fmt: skip


_EPISODE_COLUMNS = ("id", "regression_id", "series_key", "family", "metric", "grain_s", "start_time", "detected_at",
                    "peak_time", "end_time", "status", "baseline", "observed", "change_pct", "peak_change_pct",
                    "n_buckets", "stats", "updated_at")  # fmt: skip


def write_episodes(cur: StateCursor, episodes: list[Episode], now: datetime) -> None:
    """Insert (or replace) episodes by their stable ids."""
    execute_many(cur, _upsert("episodes", _EPISODE_COLUMNS, ("id",)),
                 [(e.id, e.regression_id, e.series_key, e.family, e.metric, int(e.grain_s), e.start, e.detected_at,
                   e.peak_time, e.end, e.status, _num(e.baseline), _num(e.observed), _num(e.change_pct),
                   _num(e.peak_change_pct), int(e.n_buckets), orjson.dumps(e.stats).decode(), now)
                  for e in episodes])  # fmt: skip


def write_regressions(cur: StateCursor, rows: list[dict]) -> None:
    """Insert (or replace) regression rows (dicts keyed by ``regressions`` column names)."""
    if not rows:
        return
    cols = list(rows[0])
    execute_many(cur, _upsert("regressions", cols, ("id",)), [[r[c] for c in cols] for r in rows])


_BASELINE_COLUMNS = ("series_key", "metric", "kind", "version", "grain_s", "fitted_until", "params", "updated_at")


def write_baselines(cur: StateCursor, fitted: list[tuple[str, tuple[str, ...], ParamsBatch]], now: datetime) -> int:
    """Store, per series and statistic, the parameters of the baseline kind in use (replacing older ones).

    ``fitted`` holds (statistic, series keys, batch) triples; rows whose ``ok`` is False are skipped.
    """
    rows = []
    for stat, keys, batch in fitted:
        for i in batch.arrays["ok"].nonzero()[0].tolist():
            row = batch.row(i)
            fitted_until = datetime.fromtimestamp(row["fitted_until"], UTC)
            rows.append((keys[i], stat, batch.kind, int(batch.version), int(batch.grain_s), fitted_until,
                         orjson.dumps(row).decode(), now))  # fmt: skip
    if not rows:
        return 0
    if dialect_of(cur) == "duckdb":  # one Arrow scan instead of a statement per row (DuckDB's executemany is slow)
        table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(_BASELINE_COLUMNS)})
        cur.register("_new_baselines", table)  # type: ignore[attr-defined]
        try:
            cur.execute("INSERT OR REPLACE INTO baselines SELECT * FROM _new_baselines")
        finally:
            cur.unregister("_new_baselines")  # type: ignore[attr-defined]
    else:
        execute_many(cur, _upsert("baselines", _BASELINE_COLUMNS, ("series_key", "metric")), rows)
    return len(rows)


def load_baseline(cur: StateCursor, series_key: str, metric: str) -> dict | None:
    """The stored parameters of one series' baseline for ``metric`` (JSON as written), or None."""
    rows = cur.execute("SELECT params FROM baselines WHERE series_key = ? AND metric = ?",
                       [series_key, metric]).fetchall()  # fmt: skip
    return orjson.loads(rows[0][0]) if rows else None


def _num(x: float) -> float | None:
    return None if x is None or x != x else float(x)
