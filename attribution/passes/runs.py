"""Attribution passes and their ``job_runs`` records: which window to run, running it, remembering the outcome.

A *pass* is detection (:func:`spanprism.attribution.passes.detect_pass.run_attribution`) then attribution
(:func:`attribution.passes.label_pass.label_regressions`); :func:`attribute` composes them for the CLI, the demo and the
scheduler alike. :func:`execute` runs one recorded pass of a kind:

- ``incremental``: from the end of the last *covering* successful pass minus :data:`OVERLAP`, pulled back to the
  oldest call of any ingest batch that arrived since that pass started (late data, and the window of a pass that
  failed or was interrupted in between). No such batch → ``skipped``, no work.
- ``nightly``: the last ``lookback_days`` of stored data (all history when 0), also pulled back to late data;
  rollups, baselines and regressions of that span are rebuilt and re-attributed.
- ``manual``: the requested ``[since, until)``, or everything.

Passes are idempotent per window (regression ids are hashes of series, family and onset; rollups and regressions
of a replayed span are replaced), so a window run twice — after a crash, a retry or an overlap — changes nothing.
A run left ``running`` (or ``queued``) by a dead process is marked ``interrupted`` by :func:`mark_interrupted`;
since windows start from the last *successful* pass, the next incremental pass catches its window up. A dead
``spanprism worker``'s round is marked by :func:`mark_worker_interrupted` when another worker takes over its lease
(several processes share the state database there, so "every running row" would include live ones).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson

from spanprism.attribution.classifier.model import Attributor, load_default
from spanprism.attribution.passes.detect_pass import run_attribution
from spanprism.attribution.passes.label_pass import label_regressions
from spanprism.attribution.store import calls
from spanprism.models.state import StateCursor, StateUnit
from spanprism.models.times import as_utc

log = logging.getLogger("spanprism.runs")

KINDS = ("incremental", "nightly", "manual")
TRIGGERS = ("scheduler", "api", "cli", "worker")  # worker: a `spanprism worker` round over its shards
STATUSES = ("queued", "running", "succeeded", "failed", "skipped", "interrupted")
#: How long ``skipped`` runs (idle ticks, 288 a day at the default interval) stay in ``job_runs``.
SKIPPED_KEPT = timedelta(days=7)
#: How far an incremental window reaches back before the previous one ended: the largest rollup grain, so a
#: coarse bucket that was still filling when the last pass ran is recomputed whole.
OVERLAP = timedelta(hours=1)
_COLUMNS = ("id", "kind", "trigger", "status", "queued_at", "started_at", "finished_at", "window_start",
            "window_end", "counts", "error")  # fmt: skip
_TIMES = ("queued_at", "started_at", "finished_at", "window_start", "window_end")


def attribute(
    con: duckdb.DuckDBPyConnection,
    *,
    since: datetime | None,
    until: datetime | None,
    classifier: Attributor | str | Path | None = None,
    results: StateUnit | None = None,
    keys: Sequence[str] | None = None,
    refresh: bool = True,
) -> dict[str, Any]:
    """Detection then attribution over ``[since, until)`` (all data when both are None); returns the counts.

    ``results``: units of work where the detection results live (None = ``con``'s DuckDB file); ``keys``: only
    those series (a worker's shards); ``refresh=False``: the rollups are already fresh."""
    attributor = classifier if isinstance(classifier, Attributor) else load_default(classifier)
    detected = run_attribution(con, since=since, until=until, results=results, keys=keys, refresh=refresh)
    labelled = label_regressions(con, attributor, results=results, keys=keys)
    return {
        "series": detected.series,
        "regressions_open": detected.regressions_open,
        "regressions_resolved": detected.regressions_resolved,
        "attributed": labelled.attributed,
        "not_enough_data": len(labelled.skipped_no_data),
        "failed": labelled.failed,
        "seconds": {k: round(v, 2) for k, v in detected.timings.items()},
    }


# --- run records --------------------------------------------------------------------------------------------------


def new_run(kind: str, trigger: str, *, since: datetime | None = None, until: datetime | None = None,
            now: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """A ``queued`` run record (not stored yet). A manual run's requested range is its window until it runs."""
    if kind not in KINDS or trigger not in TRIGGERS:
        raise ValueError(f"unknown run kind/trigger {kind!r}/{trigger!r}")
    if since is not None and until is not None and as_utc(since) >= as_utc(until):  # type: ignore[operator]
        raise ValueError("since must be before until")
    now = now or datetime.now(UTC)
    run_id = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:10]}"
    return {"id": run_id, "kind": kind, "trigger": trigger, "status": "queued", "queued_at": now, "started_at": None,
            "finished_at": None, "window_start": as_utc(since), "window_end": as_utc(until), "counts": {},
            "error": None}  # fmt: skip


_UPSERT = (
    f"INSERT INTO job_runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    f" ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:])}"
)


def save_run(con: StateCursor, record: dict[str, Any]) -> None:
    """Insert or update one run record (autocommit: a record is never part of a pass's transaction)."""
    values = [orjson.dumps(record["counts"]).decode() if c == "counts" else record[c] for c in _COLUMNS]
    con.execute(_UPSERT, values)


def _record(row: tuple) -> dict[str, Any]:
    record = dict(zip(_COLUMNS, row, strict=True))
    record["counts"] = orjson.loads(record["counts"] or "{}")
    for col in _TIMES:
        record[col] = as_utc(record[col])
    return record


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the API and ``--json`` show it: ISO-8601 UTC times."""
    return {k: (v.isoformat() if k in _TIMES and v is not None else v) for k, v in record.items()}


def get_run(con: StateCursor, run_id: str) -> dict[str, Any] | None:
    """One stored run record, or None."""
    rows = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM job_runs WHERE id = ?", [run_id]).fetchall()
    return _record(rows[0]) if rows else None


def list_runs(con: StateCursor, *, kind: str | None = None, status: str | None = None,
              limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
    """Stored runs, newest first, optionally of one kind/status; returns (page, total matching)."""
    where = " AND ".join(f"{col} = ?" for col, v in (("kind", kind), ("status", status)) if v is not None)
    params = [v for v in (kind, status) if v is not None]
    clause = f" WHERE {where}" if where else ""
    total = con.execute(f"SELECT count(*) FROM job_runs{clause}", params).fetchall()[0][0]
    rows = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM job_runs{clause} ORDER BY queued_at DESC, id DESC"
                       " LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()  # fmt: skip
    return [_record(r) for r in rows], total


def mark_interrupted(con: StateCursor, *, now: datetime | None = None) -> int:
    """Mark runs a dead process left ``running`` or ``queued`` as ``interrupted``; returns how many.

    Call it only when this process owns the file (server start, a CLI run): then no such run can be alive.
    """
    now = now or datetime.now(UTC)
    rows = con.execute("UPDATE job_runs SET status = 'interrupted', finished_at = ?, error = coalesce(error, ?)"
                       " WHERE status IN ('running', 'queued') RETURNING id",
                       [now, "the process stopped before the run finished"]).fetchall()  # fmt: skip
    return len(rows)


def mark_worker_interrupted(con: StateCursor, worker: str, *, reason: str, now: datetime | None = None) -> int:
    """Mark the ``running`` worker rounds of ``worker`` (``counts.worker``) as ``interrupted``; returns how many.

    Called when another worker takes over one of ``worker``'s expired leases: the holder died (or stalled past its
    lease, and then its own end-of-round record overwrites this one with what really happened)."""
    ids = [run_id for run_id, _, counts in _running_worker_rounds(con) if counts.get("worker") == worker]
    _interrupt(con, ids, reason=reason, now=now)
    return len(ids)


def mark_stale_worker_rounds(con: StateCursor, *, live: Collection[str], quiet_since: datetime, reason: str,
                             now: datetime | None = None) -> list[str]:  # fmt: skip
    """Mark ``interrupted`` the ``running`` worker rounds whose worker holds no lease (not in ``live``) and
    that recorded no progress (a finished shard, ``counts.progress_at``; else their start) since ``quiet_since``;
    returns their ids.

    A live worker holds a lease whenever it works on a shard, records progress when it finishes one and its end
    just after its last claim comes back empty: a round quiet for a lease period without a lease is one whose worker
    died between shards or after its last one, where no lease is left to take over (:func:`mark_worker_interrupted`
    covers a death mid-shard). A worker that only stalled overwrites the mark with its own end-of-round record."""
    stale = []
    for run_id, started_at, counts in _running_worker_rounds(con):
        progress = datetime.fromisoformat(counts["progress_at"]) if counts.get("progress_at") else as_utc(started_at)
        if counts.get("worker") not in live and progress is not None and progress < quiet_since:
            stale.append(run_id)
    _interrupt(con, stale, reason=reason, now=now)
    return stale


def _running_worker_rounds(con: StateCursor) -> list[tuple[str, datetime | None, dict[str, Any]]]:
    """(id, started_at, counts) of every worker round recorded ``running``."""
    rows = con.execute("SELECT id, started_at, counts FROM job_runs WHERE trigger = 'worker' AND status = 'running'"
                       ).fetchall()  # fmt: skip
    return [(r[0], r[1], orjson.loads(r[2] or "{}")) for r in rows]


def _interrupt(con: StateCursor, ids: Sequence[str], *, reason: str, now: datetime | None) -> None:
    """Mark the rounds ``ids`` ``interrupted`` unless they ended meanwhile (a first error recorded is kept)."""
    for run_id in ids:
        con.execute("UPDATE job_runs SET status = 'interrupted', finished_at = ?, error = coalesce(error, ?)"
                    " WHERE id = ? AND status = 'running'", [now or datetime.now(UTC), reason, run_id])  # fmt: skip


# --- windows ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """What one pass covers: the range handed to the detection job and the data span recorded on the run."""

    since: datetime | None
    until: datetime | None
    start: datetime | None
    end: datetime | None
    covering: bool  # covers every call stored when the pass started (a later incremental pass may build on it)


def last_covering_success(con: StateCursor) -> dict[str, Any] | None:
    """The newest succeeded pass that covered all data stored when it started (incremental windows build on it)."""
    # Workers' rounds (trigger 'worker') cover only their shards, never all data: not scanned (there are many).
    cur = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM job_runs WHERE status = 'succeeded' AND trigger <> 'worker'"
                      " ORDER BY started_at DESC")  # fmt: skip
    while rows := cur.fetchmany(100):
        for row in rows:
            record = _record(row)
            if record["counts"].get("covering"):
                return record
    return None


def _new_data(con: duckdb.DuckDBPyConnection, after: datetime | None) -> tuple[datetime, datetime] | None:
    """Time span of the calls of batches stored after ``after`` (or never rolled up); None when there are none."""
    batches = [r[0] for r in con.execute(
        # Stored calls, or spans folded into stored calls (ingest/fold.py rewrites their rows): both change data.
        "SELECT id FROM ingest_batches WHERE spans_seen > duplicates + quarantined + non_llm_skipped"
        " AND (finished_at > ? OR ? IS NULL"
        " OR id NOT IN (SELECT ingest_batch FROM rollup_batches))", [after, after]).fetchall()]  # fmt: skip
    if not batches:
        return None
    return _utc_span(calls.batches_span(con, batches))


def _utc_span(span: calls.Span | None) -> tuple[datetime, datetime] | None:
    return None if span is None else (as_utc(span[0]), as_utc(span[1]))  # type: ignore[return-value]


def plan(con: duckdb.DuckDBPyConnection, kind: str, *, since: datetime | None = None, until: datetime | None = None,
         lookback_days: float = 0, state: StateCursor | None = None) -> Window | None:  # fmt: skip
    """The window a pass of ``kind`` should cover now, or None when there is nothing to do (``state``: where
    ``job_runs`` lives when not beside the data)."""
    span = _utc_span(calls.data_span(con))
    if span is None:
        return None
    last = last_covering_success(state or con)
    new = _new_data(con, last["started_at"] if last else None)
    if kind == "manual":
        since, until = as_utc(since), as_utc(until)
        lo = max(span[0], since) if since else span[0]
        hi = min(span[1], until) if until else span[1]
        covering = until is None and (since is None or new is None or since <= new[0])
        return Window(since, until, lo, hi, covering) if lo <= hi else None
    if kind == "nightly":
        start = span[1] - timedelta(days=lookback_days) if lookback_days > 0 else None
        if start is not None and new is not None:
            start = min(start, new[0])
        start = None if start is None or start <= span[0] else start
        return Window(start, None, start or span[0], span[1], True)
    if last is None:  # the first pass ever covers everything
        return Window(None, None, span[0], span[1], True)
    if new is None:
        return None
    start = min(last["window_end"] - OVERLAP, new[0]) if last["window_end"] else new[0]
    return Window(start, None, start, span[1], True)


# --- one pass -----------------------------------------------------------------------------------------------------


def execute(con: duckdb.DuckDBPyConnection, record: dict[str, Any], *,
            classifier: Attributor | str | Path | None = None, lookback_days: float = 0,
            now: datetime | None = None, state: StateUnit | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the pass ``record`` asks for and store its outcome; returns the final record (never raises on a pass
    failure: the error is recorded as ``failed``). The caller must hold the only writer (``db.writer()``).
    ``state`` opens a committed unit of work where ``job_runs`` and the detection results live; None = on ``con``."""
    unit: StateUnit = state or (lambda: nullcontext(con))
    record = {**record, "status": "running", "started_at": now or datetime.now(UTC), "error": None}
    with unit() as cur:
        save_run(cur, record)
    try:
        with unit() as cur:
            window = plan(con, record["kind"], since=record["window_start"], until=record["window_end"],
                          lookback_days=lookback_days, state=cur)  # fmt: skip
        if window is None:
            reason = "no new data since the last successful pass" if record["kind"] == "incremental" else "no data"
            record.update(status="skipped", counts={"reason": reason})
            # An idle server records a skipped tick every few minutes; keep only the recent ones.
            with unit() as cur:
                cur.execute("DELETE FROM job_runs WHERE status = 'skipped' AND finished_at < ?",
                            [record["started_at"] - SKIPPED_KEPT])  # fmt: skip
        else:
            record.update(window_start=window.start, window_end=window.end)
            counts = attribute(con, since=window.since, until=window.until, classifier=classifier, results=state)
            record.update(status="succeeded", counts={**counts, "covering": window.covering})
    except Exception as exc:  # a failed pass is a recorded outcome; the next pass catches its window up
        log.exception("attribution pass %s failed", record["id"])
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    record["finished_at"] = datetime.now(UTC)
    with unit() as cur:
        save_run(cur, record)
    return record
