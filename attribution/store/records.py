"""Regression records: episodes of one series merged into one regression, read back as DESIGN.md dicts.

Detection stores episodes (per metric family) and regressions (per series and time span; the primary metric is
the episode metric with the largest relative change, every moved metric is kept in ``regressions.metrics``).
Attribution is not this module's business: :func:`list_regressions` merges ``label``, ``reason``, ``confidence``,
``contributions_ms``, ``evidence`` and ``exemplars`` from :data:`ATTRIBUTION_TABLE` (keyed by ``regression_id``);
until the labelling pass has run, a regression is ``unexplained`` with empty contributions and exemplars. Its
``evidence`` always ends with one ``{"signal": "detection", "test": ...}`` entry per moved metric: the test that
opened the episode, its statistic and the calls (or buckets) behind it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from spanprism.attribution.detection.base import ESCALATED
from spanprism.attribution.detection.episodes import Episode, stable_id
from spanprism.models.state import StateCursor
from spanprism.models.times import iso_z

#: The table the attribution step writes (one row per regression_id). Its absence is normal.
ATTRIBUTION_TABLE = "regression_attributions"
ATTRIBUTION_FIELDS: dict[str, Any] = {
    "label": "unexplained", "reason": None, "confidence": 0.0,
    "contributions_ms": {}, "evidence": [], "exemplars": [],
}  # fmt: skip
_JSON_FIELDS = ("contributions_ms", "evidence", "exemplars")
#: A regression is reported only when its primary (p50/p95) metric rose at least this much. An episode can open on
#: the geometric mean while the reported quantiles barely move; such a "regression" would show +0 % to a reader.
MIN_REPORTED_CHANGE_PCT = 10.0
#: The evidence signal of a regression the label pass withholds from the list (:mod:`~attribution.passes.report_gate`).
WITHHELD = "withheld"
#: SQL LIKE pattern of the stored evidence JSON (orjson: no spaces) of a withheld regression.
WITHHELD_LIKE = f'%"signal":"{WITHHELD}"%'
_FAR = datetime.max.replace(tzinfo=UTC)


def _group(episodes: list[Episode], gap_s: int) -> list[list[Episode]]:
    """Episodes of one series that overlap, or follow within ``gap_s`` in a metric family already moved, form one
    regression. One cause moves its families together (overlapping episodes); an episode of another family that
    starts only after the others ended is the next cause of a chain (a routing change, then contention), not the
    same one, and joining them would give both one label."""
    groups: list[list[Episode]] = []
    end = _FAR
    for ep in sorted(episodes, key=lambda e: (e.series_key, e.start, e.family)):
        # A larger shift inside an open episode is a regression of its own, however close it follows.
        overlaps = ep.start < end
        chained = not overlaps and (ep.start - end).total_seconds() <= gap_s
        joins = not _escalates(ep) and (
            overlaps or (chained and bool(groups) and ep.family in {e.family for e in groups[-1]})
        )
        if groups and groups[-1][0].series_key == ep.series_key and joins:
            groups[-1].append(ep)
            end = _FAR if ep.end is None or end == _FAR else max(end, ep.end)
        else:
            groups.append([ep])
            end = _FAR if ep.end is None else ep.end
    return groups


def _escalates(ep: Episode) -> bool:
    """Did ``ep`` open on a further shift inside an open episode (per-call detection marks it in its test stats)?"""
    return any(ESCALATED in values for values in ep.stats.values())


def group_regressions(episodes: list[Episode], names: Mapping[str, Mapping[str, str | None]], *,
                      merge_gap_s: int, now: datetime) -> list[dict[str, Any]]:  # fmt: skip
    """One ``regressions`` row per series and overlapping (or nearly adjacent) episodes; sets ``regression_id``."""
    rows = []
    for group in _group(episodes, merge_gap_s):
        key = group[0].series_key
        start = min(e.start for e in group)
        rid = stable_id(key, "regression", start.isoformat())
        primary = max(group, key=lambda e: -math.inf if e.change_pct != e.change_pct else e.change_pct)
        is_open = any(e.end is None for e in group)
        # Accepted when the shift that ends the regression persisted (the new normal), resolved when it came back.
        status = "open" if is_open else ("accepted" if max(group, key=lambda e: e.end).accepted else "resolved")
        moved = [
            {
                "metric": e.metric,
                "family": e.family,
                "baseline": e.baseline,
                "observed": e.observed,
                "change_pct": e.change_pct,
                "start": iso_z(e.start),
                "end": iso_z(e.end),
                "episode_id": e.id,
                "detection": _detection(e),
            }
            for e in sorted(group, key=lambda e: -(e.change_pct if e.change_pct == e.change_pct else -1e9))
        ]
        for e in group:
            e.regression_id = rid
        name = names.get(key, {})
        rows.append({
            "id": rid, "series_key": key, "service": name.get("service"), "provider": name.get("provider"),
            "request_model": name.get("request_model"), "operation": name.get("operation"),
            "tenant": name.get("tenant"), "start_time": start, "detected_at": min(e.detected_at for e in group),
            "end_time": None if is_open else max(e.end for e in group if e.end is not None),
            "status": status, "metric": primary.metric,
            "baseline": _clean(primary.baseline), "observed": _clean(primary.observed),
            "change_pct": _clean(primary.change_pct), "metrics": orjson.dumps(moved).decode(), "updated_at": now,
        })  # fmt: skip
    return rows


def _detection(e: Episode) -> dict[str, Any]:
    """Which test opened the episode, its statistic and the calls behind it (per-call tests record them in stats;
    a bucket episode that escalated an open one records its test with the level it escalated from)."""
    for test, values in e.stats.items():
        if "statistic" in values or ESCALATED in values:
            return {"test": test, **values}
    return {"test": "bucket_cusum", "grain_s": e.grain_s, "buckets": e.n_buckets}


def _clean(x: float | None) -> float | None:
    return None if x is None or x != x else float(x)


def _series_filter(series: str | Mapping[str, str] | None) -> tuple[str, list[Any]]:
    if series is None:
        return "", []
    if isinstance(series, str):
        return " AND r.series_key = ?", [series]
    column = {"service": "service", "provider": "provider", "model": "request_model",
              "request_model": "request_model", "operation": "operation", "tenant": "tenant"}  # fmt: skip
    unknown = set(series) - set(column)
    if unknown:
        raise ValueError(f"unknown series fields {sorted(unknown)}")
    return "".join(f" AND r.{column[k]} = ?" for k in series), list(series.values())


def regression_ids(con: StateCursor) -> set[str]:
    """The id of every stored regression (the alert outbox resolves triggers whose regression is gone)."""
    return {r[0] for r in con.execute("SELECT id FROM regressions").fetchall()}


def list_regressions(con: StateCursor, *, label: str | None = None, status: str | None = None,
                     series: str | Mapping[str, str] | None = None, since: datetime | None = None,
                     until: datetime | None = None, detail: bool = False, id_prefix: str | None = None,
                     min_change_pct: float = MIN_REPORTED_CHANGE_PCT,
                     withheld: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Regression records as DESIGN.md dicts, newest first (only those whose metric rose ≥ ``min_change_pct``).

    A regression the label pass withheld (an evidence row ``{"signal": "withheld", "reason": ...}``: own-size drift,
    a weak shift nothing explains, :mod:`~attribution.passes.report_gate`) is left out unless ``withheld``.

    ``series`` is a series key or a mapping over service/provider/model/operation[/tenant]; ``since``/``until``
    keep regressions overlapping that range; ``id_prefix`` those whose id starts with it (one record's page must not
    parse every record's JSON). ``detail=True`` adds ``metrics`` (every metric that moved).
    """
    # Migration 0003 made the attribution table part of every schema: no per-call probe for it.
    extra = list(ATTRIBUTION_FIELDS)
    join = f" LEFT JOIN {ATTRIBUTION_TABLE} a ON a.regression_id = r.id"
    sql = (f"SELECT r.id, r.service, r.provider, r.request_model, r.operation, r.tenant, r.start_time, r.end_time,"
           f" r.status, r.metric, r.baseline, r.observed, r.change_pct, r.metrics"
           f"{''.join(f', a.{c}' for c in extra)} FROM regressions r{join} WHERE r.change_pct >= ?")  # fmt: skip
    params: list[Any] = [min_change_pct]
    if status is not None:
        sql += " AND r.status = ?"
        params.append(status)
    if since is not None:
        sql += " AND (r.end_time IS NULL OR r.end_time > ?)"
        params.append(since)
    if until is not None:
        sql += " AND r.start_time < ?"
        params.append(until)
    if id_prefix is not None:
        sql += " AND left(r.id, ?) = ?"  # both engines (DuckDB's starts_with is not PostgreSQL's before 11)
        params += [len(id_prefix), id_prefix]
    where, args = _series_filter(series)
    rows = con.execute(sql + where + " ORDER BY r.start_time DESC, r.id", params + args).fetchall()
    records = [_record(row, extra, detail) for row in rows]
    return [r for r in records if (label is None or r["label"] == label) and (withheld or not is_withheld(r))]


def is_withheld(record: Mapping[str, Any]) -> bool:
    """Did the label pass withhold this regression record from the list?"""
    return any(row.get("signal") == WITHHELD for row in record.get("evidence") or ())


def _record(row: tuple, extra: list[str], detail: bool) -> dict[str, Any]:
    series = {"service": row[1], "provider": row[2], "model": row[3], "operation": row[4]}
    if row[5] is not None:
        series["tenant"] = row[5]
    rec: dict[str, Any] = {
        "id": row[0], "series": series, "start": iso_z(row[6]), "end": iso_z(row[7]), "status": row[8],
        "metric": row[9], "baseline": row[10], "observed": row[11], "change_pct": row[12],
    }  # fmt: skip
    merged = dict(zip(extra, row[14:], strict=True))
    for name, default in ATTRIBUTION_FIELDS.items():
        value = merged.get(name)
        if isinstance(value, str) and name in _JSON_FIELDS:
            value = orjson.loads(value)
        rec[name] = copy.deepcopy(default) if value is None else value
    moved = orjson.loads(row[13]) if row[13] else []
    # DESIGN.md: evidence also names the detection test that fired, its statistic and the calls behind it.
    rec["evidence"] = [*rec["evidence"], *({"signal": "detection", "metric": m["metric"], **m["detection"]}
                                           for m in moved if "detection" in m)]  # fmt: skip
    if detail:
        rec["metrics"] = moved
    return rec
