"""Reading rollups and writing baselines, episodes and regressions with a caller-provided DuckDB connection.

All SQL of the detection pipeline lives here (the rollup SQL itself is in :mod:`spanprism.attribution.store.rollups`).
Writes of one run happen in one transaction, so readers never see half a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import duckdb
import orjson
import pandas as pd
import pyarrow as pa

from spanprism.attribution.baselines import ParamsBatch
from spanprism.attribution.detection.episodes import FAMILIES, Episode
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


def load_rollups(con: duckdb.DuckDBPyConnection, *, start_s: int, end_s: int,
                 grains: Iterable[int]) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
    """Rollup rows of the detection statistics in [start_s, end_s), and the sorted series keys.

    Rows carry ``sid`` (index into the keys) and ``bucket_s`` (epoch seconds): integers, because turning
    millions of key strings into Python objects would cost more than the whole detection.
    """
    grain_list = ", ".join(str(int(g)) for g in grains)
    where = f"grain_s IN ({grain_list}) AND bucket_start >= to_timestamp($lo) AND bucket_start < to_timestamp($hi)"
    params = {"lo": start_s, "hi": end_s}
    keys = [r[0] for r in con.execute(
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
    return frame, keys


def series_names(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str | None]]:
    """series_key → {service, provider, request_model, operation, tenant}."""
    rows = con.execute("SELECT series_key, service, provider, request_model, operation, tenant FROM series").fetchall()
    cols = ("service", "provider", "request_model", "operation", "tenant")
    return {r[0]: dict(zip(cols, r[1:], strict=True)) for r in rows}


def replay_start(con: duckdb.DuckDBPyConnection, since_s: int) -> int:
    """The earliest time a run from ``since_s`` must re-detect: before any regression still open or ending later.

    Regressions touching the replayed range are recomputed whole, so a run never keeps half a regression.
    """
    start = since_s
    while True:
        earlier = con.execute(
            "SELECT epoch(min(start_time))::BIGINT FROM regressions "
            "WHERE (end_time IS NULL OR end_time > to_timestamp(?)) AND start_time < to_timestamp(?)",
            [start, start],
        ).fetchall()[0][0]
        if earlier is None or earlier >= start:
            return start
        start = int(earlier)


def delete_from(con: duckdb.DuckDBPyConnection, start_s: int) -> None:
    """Drop regressions (and their episodes) that start at or after ``start_s`` or are still open after it."""
    doomed = "SELECT id FROM regressions WHERE start_time >= to_timestamp(?) OR end_time IS NULL OR " \
             "end_time > to_timestamp(?)"  # fmt: skip
    con.execute(f"DELETE FROM episodes WHERE regression_id IN ({doomed}) OR start_time >= to_timestamp(?)",
                [start_s, start_s, start_s])  # fmt: skip
    con.execute(f"DELETE FROM regressions WHERE id IN ({doomed})", [start_s, start_s])


def load_episodes(con: duckdb.DuckDBPyConnection) -> list[Episode]:
    """Every stored episode (used to mask earlier anomalies from the baselines of a replay)."""
    rows = con.execute(
        """SELECT id, series_key, family, metric, grain_s, start_time, detected_at, peak_time, end_time, baseline,
                  observed, change_pct, peak_change_pct, n_buckets, stats, regression_id, status FROM episodes"""
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


def write_episodes(con: duckdb.DuckDBPyConnection, episodes: list[Episode], now: datetime) -> None:
    """Insert (or replace) episodes by their stable ids."""
    if not episodes:  # DuckDB refuses an empty executemany
        return
    con.executemany(
        "INSERT OR REPLACE INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(e.id, e.regression_id, e.series_key, e.family, e.metric, e.grain_s, e.start, e.detected_at, e.peak_time,
          e.end, e.status, _num(e.baseline), _num(e.observed), _num(e.change_pct), _num(e.peak_change_pct),
          e.n_buckets, orjson.dumps(e.stats).decode(), now) for e in episodes],
    )  # fmt: skip


def write_regressions(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    """Insert (or replace) regression rows (dicts keyed by ``regressions`` column names)."""
    if not rows:
        return
    cols = list(rows[0])
    con.executemany(
        f"INSERT OR REPLACE INTO regressions ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
        [[r[c] for c in cols] for r in rows],
    )


def write_baselines(
    con: duckdb.DuckDBPyConnection, fitted: list[tuple[str, tuple[str, ...], ParamsBatch]], now: datetime
) -> int:
    """Store, per series and statistic, the parameters of the baseline kind in use (replacing older ones).

    ``fitted`` holds (statistic, series keys, batch) triples; rows whose ``ok`` is False are skipped.
    """
    cols = ("series_key", "metric", "kind", "version", "grain_s", "fitted_until", "params", "updated_at")
    out: dict[str, list] = {c: [] for c in cols}
    for stat, keys, batch in fitted:
        for i in batch.arrays["ok"].nonzero()[0].tolist():
            row = batch.row(i)
            values = (
                keys[i],
                stat,
                batch.kind,
                batch.version,
                batch.grain_s,
                datetime.fromtimestamp(row["fitted_until"], UTC),
                orjson.dumps(row).decode(),
                now,
            )
            for col, value in zip(cols, values, strict=True):
                out[col].append(value)
    if not out["series_key"]:
        return 0
    table = pa.table(out)
    con.register("_new_baselines", table)
    try:
        con.execute("INSERT OR REPLACE INTO baselines SELECT * FROM _new_baselines")
    finally:
        con.unregister("_new_baselines")
    return table.num_rows


def load_baseline(con: duckdb.DuckDBPyConnection, series_key: str, metric: str) -> dict | None:
    """The stored parameters of one series' baseline for ``metric`` (JSON as written), or None."""
    rows = con.execute("SELECT params FROM baselines WHERE series_key = ? AND metric = ?",
                       [series_key, metric]).fetchall()  # fmt: skip
    return orjson.loads(rows[0][0]) if rows else None


def _num(x: float) -> float | None:
    return None if x is None or x != x else float(x)
