"""The attribution pass: give every detected regression its label, reason, confidence, contributions and exemplars.

For each regression it reads the series' calls (through :mod:`spanprism.attribution.store.calls`) in the episode
window and in a clean baseline window just before it (other regressions of the series cut out), builds the
cross-series context (how many other series of the same provider regressed at the same time), asks the
:class:`~attribution.classifier.model.Attributor`, and stores the answer in ``regression_attributions``. A regression
is re-attributed only when detection updated it since (or when its stored contributions do not sum to the record's
observed − baseline: those were stored before :mod:`~attribution.decomposition.closing` existed).

The stored ``contributions_ms`` close on the record: the decomposition splits the change between its own pooled
windows, and :func:`~attribution.decomposition.closing.close_on` puts that split onto the detector's change.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from spanprism.attribution.classifier.features import EpisodeContext
from spanprism.attribution.classifier.model import VERSION, Attribution, Attributor
from spanprism.attribution.decomposition.closing import close_on, closes, split_evidence
from spanprism.attribution.passes.report_gate import withheld_row
from spanprism.attribution.store import calls
from spanprism.attribution.store.records import MIN_REPORTED_CHANGE_PCT, list_regressions
from spanprism.attribution.vocabulary import check_reason
from spanprism.models.state import StateCursor, StateUnit, key_in
from spanprism.models.transaction import unit_on

_SERIES = ("service", "provider", "request_model", "operation")
_MIN_BASELINE_CALLS = 30


@dataclass(slots=True)
class LabelSummary:
    """What one attribution pass did."""

    attributed: int = 0
    skipped_no_data: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Regression:
    id: str
    series: tuple[Any, ...]
    tenant: str | None
    start: datetime
    end: datetime | None
    metric: str
    provider: str | None
    baseline: float | None = None  # the record's (the detector's) values the contributions must close on
    observed: float | None = None
    detections: tuple[dict[str, Any], ...] = ()  # the detection entry of every moved metric (report_gate)


def _pending(con: StateCursor, *, force: bool, keys: Sequence[str] | None = None) -> list[_Regression]:
    only, params = ("", []) if keys is None else key_in(con, "r.series_key", keys)
    rows = con.execute(
        "SELECT r.id, r.service, r.provider, r.request_model, r.operation, r.tenant, r.start_time, r.end_time,"
        " r.metric, r.baseline, r.observed, a.regression_id IS NULL OR a.attributed_at < r.updated_at,"
        " a.contributions_ms, a.peers_regressed, r.metrics"
        " FROM regressions r LEFT JOIN regression_attributions a ON a.regression_id = r.id"
        f" WHERE r.change_pct >= ?{' AND ' + only if only else ''} ORDER BY r.start_time, r.id",
        [MIN_REPORTED_CHANGE_PCT, *params],
    ).fetchall()
    pending = []
    for r in rows:
        moved = orjson.loads(r[14]) if r[14] else []
        detections = tuple(m["detection"] for m in moved if "detection" in m)
        reg = _Regression(r[0], tuple(r[1:5]), r[5], r[6], r[7], r[8], r[2], r[9], r[10], detections)
        stored = orjson.loads(r[12]) if r[12] else None
        if force or r[11] or not closes(stored, reg.baseline, reg.observed) or _peers_moved(con, reg, r[13]):
            pending.append(reg)
    return pending


def _peers_moved(con: StateCursor, reg: _Regression, stored: int | None) -> bool:
    """Did the count of regressed peer series change since this (resolved) regression was labelled? With workers,
    another shard may store its regressions after this one was labelled; open ones are relabelled on every pass."""
    if stored is None or reg.end is None or reg.provider is None:
        return False
    return _regressed(con, reg, reg.end) != stored


def _close(att: Attribution, reg: _Regression) -> Attribution:
    """The attribution with contributions summing to the record's observed − baseline, and what they were split on;
    with a ``withheld`` evidence row when the regression is not to be reported (:mod:`.report_gate`)."""
    if reg.baseline is None or reg.observed is None:
        return att
    change = reg.observed - reg.baseline
    att.contributions_ms = close_on(att.contributions_ms, change)
    att.evidence = [*att.evidence, split_evidence(att.baseline, att.observed, change)]
    withheld = withheld_row(att.label, att.evidence, att.contributions_ms, change, reg.detections)
    if withheld is not None:
        att.evidence.append(withheld)
    return att


def _series(reg: _Regression) -> dict[str, Any]:
    """The regression's series as ``{column: value}`` (tenant only when the series is keyed by one)."""
    series = dict(zip(_SERIES, reg.series, strict=True))
    return series if reg.tenant is None else {**series, "tenant": reg.tenant}


def _other_windows(con: StateCursor, reg: _Regression, until: datetime) -> list[tuple]:
    rows = con.execute(
        "SELECT start_time, coalesce(end_time, ?) FROM regressions WHERE id <> ? AND service IS NOT DISTINCT FROM ?"
        " AND provider IS NOT DISTINCT FROM ? AND request_model IS NOT DISTINCT FROM ?"
        " AND operation IS NOT DISTINCT FROM ?",
        [until, reg.id, *reg.series],
    ).fetchall()
    return [(s, e) for s, e in rows]


def _context(con: duckdb.DuckDBPyConnection, results: StateCursor, reg: _Regression,
             end: datetime) -> tuple[EpisodeContext, int | None]:  # fmt: skip
    """Other series of the same provider with traffic in the window, and how many of them regressed meanwhile (also
    the raw count of regressed peers, stored with the label)."""
    if reg.provider is None:
        return EpisodeContext(), None
    besides = (reg.series[0], reg.series[2], reg.series[3])
    peers = calls.peer_series_count(con, reg.provider, reg.start, end, besides=besides)
    regressed = _regressed(results, reg, end)
    return EpisodeContext(peers=peers, peers_regressed=int(min(regressed, peers))), regressed


def _regressed(results: StateCursor, reg: _Regression, end: datetime) -> int:
    """Other series of the regression's provider with a regression overlapping [start, end)."""
    return int(
        results.execute(
            "SELECT count(DISTINCT series_key) FROM regressions WHERE provider = ? AND id <> ?"
            " AND start_time < ? AND coalesce(end_time, ?) > ?"
            " AND NOT (service IS NOT DISTINCT FROM ? AND request_model IS NOT DISTINCT FROM ?"
            " AND operation IS NOT DISTINCT FROM ?)",
            [reg.provider, reg.id, end, end, reg.start, reg.series[0], reg.series[2], reg.series[3]],
        ).fetchall()[0][0]
    )


def _windows(con: duckdb.DuckDBPyConnection, results: StateCursor, reg: _Regression,
             baseline_hours: float) -> tuple[pa.Table, pa.Table]:  # fmt: skip
    series = _series(reg)
    last = calls.last_call_start(con, series)
    end = reg.end or (last + timedelta(microseconds=1) if last else reg.start)
    episode = calls.series_calls(con, series, reg.start, end)
    # Other regressions of the series are cut out of the baseline: they are not "normal".
    cut = _other_windows(results, reg, end)
    baseline = pa.table({})
    for hours in (baseline_hours, baseline_hours * 3):  # sparse series: look further back before giving up
        baseline = calls.series_calls(con, series, reg.start - timedelta(hours=hours), reg.start, cut=cut)
        if baseline.num_rows >= _MIN_BASELINE_CALLS:
            break
    return baseline, episode


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _store(unit: StateUnit, reg_id: str, att: Attribution, version: str, n: tuple[int, int],
           regressed: int | None) -> None:  # fmt: skip
    fields = att.to_record_fields()
    with unit() as cur:
        cur.execute("DELETE FROM regression_attributions WHERE regression_id = ?", [reg_id])
        cur.execute(
            "INSERT INTO regression_attributions (regression_id, label, reason, confidence, probabilities,"
            " contributions_ms, evidence, exemplars, model_version, baseline_calls, episode_calls, attributed_at,"
            " peers_regressed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                reg_id, fields["label"], fields["reason"], fields["confidence"], _json(att.probabilities),
                _json(fields["contributions_ms"]), _json(fields["evidence"]), _json(fields["exemplars"]),
                version, n[0], n[1], datetime.now(UTC), regressed,
            ],
        )  # fmt: skip


def regression_features(
    con: duckdb.DuckDBPyConnection,
    attributor: Attributor,
    regression_id: str,
    *,
    baseline_hours: float = 24.0,
    results: StateCursor | None = None,
) -> dict[str, float] | None:
    """The classifier features of one stored regression (for post-mortem feedback); None without enough data.
    ``results``: where the regressions live when not in ``con``'s file (a PostgreSQL state cursor)."""
    rc = results or con
    regs = [r for r in _pending(rc, force=True) if r.id == regression_id]
    if not regs:
        return None
    reg = regs[0]
    baseline, episode = _windows(con, rc, reg, baseline_hours)
    if baseline.num_rows < 3 or episode.num_rows < 3:
        return None
    end = reg.end or episode.column("start_time")[-1].as_py()
    att = attributor.attribute(baseline, episode, metric=reg.metric, context=_context(con, rc, reg, end)[0])
    return dict(att.features)


def record_feedback(con: StateCursor, regression_id: str, *, label: str, reason: str | None = None,
                    note: str | None = None, features: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Store the true label (and reason, note) of a regression from a post-mortem; returns the stored row.

    ``features`` (from :func:`regression_features`) are kept with the label so that ``spanprism train
    --with-feedback`` can learn from it. Raises ValueError for an unknown label or a reason of another label.
    """
    check_reason(label, reason)
    row = {"id": uuid.uuid4().hex, "regression_id": regression_id, "label": label, "reason": reason, "note": note,
           "created_at": datetime.now(UTC)}  # fmt: skip
    con.execute(
        "INSERT INTO regression_feedback VALUES (?, ?, ?, ?, ?, ?, ?)",
        [row["id"], regression_id, label, reason, note, _json(features) if features else None, row["created_at"]],
    )
    return row


def list_feedback(con: StateCursor, regression_id: str) -> list[dict[str, Any]]:
    """Every post-mortem label recorded for one regression, oldest first."""
    rows = con.execute(
        "SELECT id, label, reason, note, created_at FROM regression_feedback WHERE regression_id = ?"
        " ORDER BY created_at, id",
        [regression_id],
    ).fetchall()
    return [{"id": r[0], "label": r[1], "reason": r[2], "note": r[3], "created_at": r[4]} for r in rows]


def find_regression(con: StateCursor, ref: str, *, feedback: bool = True) -> dict[str, Any]:
    """The regression whose id is ``ref`` or alone starts with it, with ``metrics`` and its ``feedback``.

    Shared by ``GET /regressions/{id}``, the CLI and the web page (which caches the record between attribution
    passes and reads the feedback, recorded between them, itself: ``feedback=False``). Raises LookupError (saying
    why) when ``ref`` matches no regression or several.
    """
    matches = list_regressions(con, detail=True, id_prefix=ref, withheld=True)  # a link to it still opens
    exact = [r for r in matches if r["id"] == ref]
    if len(exact) == 1 or len(matches) == 1:
        record = (exact or matches)[0]
        if feedback:
            record["feedback"] = list_feedback(con, record["id"])
        return record
    raise LookupError(f"id {ref!r} {'is ambiguous' if matches else 'matches no regression'}")


def feedback_examples(con: StateCursor) -> list[tuple[dict[str, float], str, str | None]]:
    """Post-mortem labels with their features, newest label per regression, for ``spanprism train --with-feedback``."""
    rows = con.execute(
        "SELECT features, label, reason FROM (SELECT *, row_number() OVER (PARTITION BY regression_id"
        " ORDER BY created_at DESC) AS k FROM regression_feedback) AS f WHERE k = 1 AND features IS NOT NULL"
        " ORDER BY regression_id"
    ).fetchall()
    return [(orjson.loads(f), label, reason) for f, label, reason in rows]


def label_regressions(
    con: duckdb.DuckDBPyConnection,
    attributor: Attributor,
    *,
    force: bool = False,
    baseline_hours: float = 24.0,
    seed: int = 0,
    results: StateUnit | None = None,
    keys: Sequence[str] | None = None,
) -> LabelSummary:
    """Attribute every regression that is new or changed since its last attribution (all of them if ``force``).

    ``results`` opens units of work where the regressions and attributions live (None = ``con``'s DuckDB file);
    ``keys`` labels the regressions of those series only (a worker's shards)."""
    summary = LabelSummary()
    version = str(attributor.metadata.get("version", VERSION))
    unit = results or unit_on(con)
    with unit() as rc:
        pending = _pending(rc, force=force, keys=keys)
    for reg in pending:
        with unit() as rc:
            baseline, episode = _windows(con, rc, reg, baseline_hours)
        if baseline.num_rows < 3 or episode.num_rows < 3:
            summary.skipped_no_data.append(reg.id)
            continue
        end = reg.end or episode.column("start_time")[-1].as_py()
        try:
            with unit() as rc:
                context, regressed = _context(con, rc, reg, end)
            att = attributor.attribute(baseline, episode, metric=reg.metric, context=context, seed=seed)
        except ValueError as exc:  # e.g. a TTFT metric on a window without streaming calls
            summary.failed[reg.id] = str(exc)
            continue
        _store(unit, reg.id, _close(att, reg), version, (baseline.num_rows, episode.num_rows), regressed)
        summary.attributed += 1
    return summary
