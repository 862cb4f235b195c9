"""The persisted alert outbox: what to send (enqueue) and what happened (delivery bookkeeping).

Enqueue policy (one pass over every regression record):
- an **open** regression matched by an enabled rule gets a ``trigger`` row for the rule's destination (only the
  regressions the API reports trigger: change ≥ ``MIN_REPORTED_CHANGE_PCT``, whatever a rule's own minimum);
- a **resolved** regression gets a ``resolve`` row for every destination that already has its ``trigger`` row
  (whatever rule matched then, even if the rule changed since);
- a triggered regression that is **no longer stored** (a re-detection replaced or dropped it) gets a ``resolve``
  with its trigger's record marked ``"withdrawn": true``, so no page stays open forever;
- a regression **first seen already resolved** gets nothing: it opened and closed between two passes (or before the
  rule existed), so paging for it now would only page for history — e.g. the whole backlog on a first start.
Rows are ``INSERT … ON CONFLICT DO NOTHING`` on UNIQUE(regression_id, destination_id, event): re-running the pass,
restarting the server or overlapping rules never produce a second trigger or resolve.

Delivery order: a ``resolve`` is due only once its ``trigger`` was sent; if the trigger failed or expired, the
resolve is marked ``failed`` (there is nothing to resolve at the receiver).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from spanprism.api.alerts.rules import Rule
from spanprism.attribution.store.records import MIN_REPORTED_CHANGE_PCT, is_withheld
from spanprism.models.state import StateCursor, dialect_of

STATUSES = ("pending", "sent", "failed", "expired")


@dataclass(frozen=True)
class Row:
    """One due outbox row."""

    id: str
    regression_id: str
    destination_id: str
    event: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


def plan(records: Iterable[dict[str, Any]], rules: list[Rule],
         triggered: set[tuple[str, str]]) -> list[tuple[str, str, str | None, str, dict[str, Any]]]:  # fmt: skip
    """``(regression_id, destination_id, rule_id, event, record)`` rows to insert (duplicates allowed: the unique
    key drops them). ``triggered`` holds the (regression, destination) pairs that already have a trigger row."""
    rows = []
    by_regression: dict[str, list[str]] = {}
    for rid, dest in triggered:
        by_regression.setdefault(rid, []).append(dest)
    for rec in records:
        rid = str(rec["id"])
        # A regression the label pass withheld (records.is_withheld) raises nothing, and a page it raised before it
        # was withheld resolves, as when the regression ends.
        if rec.get("status") == "open" and not is_withheld(rec):
            if (rec.get("change_pct") or 0.0) < MIN_REPORTED_CHANGE_PCT:
                continue
            for rule in rules:
                if rule.matches(rec):
                    rows.append((rid, rule.destination_id, rule.id, "trigger", rec))
        else:
            rows.extend((rid, dest, None, "resolve", rec) for dest in sorted(by_regression.get(rid, ())))
    return rows


def existing(cur: StateCursor) -> set[tuple[str, str, str]]:
    """Every (regression, destination, event) already queued."""
    rows = cur.execute("SELECT regression_id, destination_id, event FROM alert_outbox").fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def enqueue(cur: StateCursor, records: list[dict[str, Any]], rules: list[Rule],
            *, now: datetime | None = None, stored: set[str] | None = None) -> int:  # fmt: skip
    """Insert the planned rows (inside the caller's transaction); returns how many were new.

    ``stored`` is the id of every stored regression when they live in another database than the outbox (state in
    PostgreSQL); None reads them from the ``regressions`` table beside the outbox.
    """
    now = now or datetime.now(UTC)
    new = 0
    queued = existing(cur)
    triggered = {(rid, dest) for rid, dest, event in queued if event == "trigger"}
    for rid, dest, rule_id, event, rec in [*plan(records, rules, triggered), *_withdrawn(cur, queued, now, stored)]:
        if (rid, dest, event) in queued:  # skip the no-op inserts; the unique key stays the guarantee
            continue
        queued.add((rid, dest, event))
        inserted = cur.execute(
            "INSERT INTO alert_outbox (id, regression_id, destination_id, rule_id, event, payload, status, attempts,"
            " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING id",
            ["out_" + secrets.token_hex(8), rid, dest, rule_id, event, orjson.dumps(rec).decode(), now, now],
        ).fetchall()
        new += len(inserted)
    return new


def _withdrawn(cur: StateCursor, queued: set[tuple[str, str, str]], now: datetime,
               stored: set[str] | None) -> list[tuple[str, str, str | None, str, dict[str, Any]]]:  # fmt: skip
    """Resolves for triggered regressions that are no longer stored at all.

    A nightly re-detection can replace an episode by one with another onset (another id) or drop it; the page it
    raised must still resolve, or it stays open at the receiver forever. The payload is the trigger's record, marked
    ``"withdrawn": true`` and resolved now. Only those triggers' payloads are read (the SQL finds them).
    """
    if stored is None:
        rows = cur.execute("SELECT regression_id, destination_id, payload FROM alert_outbox WHERE event = 'trigger'"
                           " AND regression_id NOT IN (SELECT id FROM regressions)"
                           " ORDER BY regression_id, destination_id").fetchall()  # fmt: skip
    else:
        gone = sorted({(rid, dest) for rid, dest, event in queued if event == "trigger" and rid not in stored})
        rows = [r for rid, dest in gone if (rid, dest, "resolve") not in queued for r in cur.execute(
            "SELECT regression_id, destination_id, payload FROM alert_outbox WHERE event = 'trigger'"
            " AND regression_id = ? AND destination_id = ?", [rid, dest]).fetchall()]  # fmt: skip
    end = now.isoformat().replace("+00:00", "Z")
    return [(rid, dest, None, "resolve", {**orjson.loads(payload), "status": "resolved", "end": end, "withdrawn": True})
            for rid, dest, payload in rows if (rid, dest, "resolve") not in queued]  # fmt: skip


def settle_blocked(cur: StateCursor, now: datetime) -> int:
    """Mark rows that can never go out as failed: resolves whose trigger failed/expired, deleted destinations."""
    rows = cur.execute(
        "UPDATE alert_outbox o SET status = 'failed', last_error = 'trigger was not delivered', next_attempt_at = ?"
        " WHERE o.status = 'pending' AND o.event = 'resolve' AND EXISTS (SELECT 1 FROM alert_outbox t"
        " WHERE t.regression_id = o.regression_id AND t.destination_id = o.destination_id AND t.event = 'trigger'"
        " AND t.status IN ('failed', 'expired')) RETURNING o.id", [now]).fetchall()  # fmt: skip
    rows += cur.execute(
        "UPDATE alert_outbox SET status = 'failed', last_error = 'destination deleted', next_attempt_at = ?"
        " WHERE status = 'pending' AND destination_id NOT IN (SELECT id FROM alert_destinations) RETURNING id",
        [now]).fetchall()  # fmt: skip
    return len(rows)


def due(cur: StateCursor, now: datetime, limit: int = 100, *, claim: bool = False) -> list[Row]:
    """Pending rows whose time has come, triggers first; a resolve only after its trigger was sent.

    ``claim`` (PostgreSQL, inside the caller's transaction): lock the rows returned and skip rows another
    deliverer holds, so each row goes to exactly one of several deliverers until the transaction ends. A row
    another deliverer sent and committed meanwhile is re-checked under the lock and no longer matches.
    """
    lock = " FOR UPDATE OF o SKIP LOCKED" if claim and dialect_of(cur) == "postgresql" else ""
    rows = cur.execute(
        "SELECT o.id, o.regression_id, o.destination_id, o.event, o.payload, o.attempts, o.created_at"
        " FROM alert_outbox o WHERE o.status = 'pending' AND o.next_attempt_at <= ? AND (o.event = 'trigger'"
        " OR EXISTS (SELECT 1 FROM alert_outbox t WHERE t.regression_id = o.regression_id"
        " AND t.destination_id = o.destination_id AND t.event = 'trigger' AND t.status = 'sent'))"
        " ORDER BY o.event = 'resolve', o.next_attempt_at, o.id LIMIT ?" + lock, [now, limit]).fetchall()  # fmt: skip
    return [Row(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5], r[6]) for r in rows]


def mark_sent(cur: StateCursor, row_id: str, now: datetime) -> None:
    cur.execute("UPDATE alert_outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?, last_error = NULL"
                " WHERE id = ? AND status = 'pending'", [now, row_id])  # fmt: skip


def mark_retry(cur: StateCursor, row_id: str, next_at: datetime, error: str | None) -> None:
    cur.execute("UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE id = ? AND status = 'pending'", [next_at, error, row_id])  # fmt: skip


def mark_final(cur: StateCursor, row_id: str, status: str, error: str | None, *,
               attempted: bool) -> None:  # fmt: skip
    """``failed`` or ``expired``; ``attempted`` counts this try."""
    cur.execute("UPDATE alert_outbox SET status = ?, last_error = ?, attempts = attempts + ? WHERE id = ?"
                " AND status = 'pending'", [status, error, int(attempted), row_id])  # fmt: skip


_LIST = ("SELECT o.id, o.regression_id, o.destination_id, d.name, d.kind, o.rule_id, o.event, o.status, o.attempts,"
         " o.next_attempt_at, o.last_error, o.created_at, o.sent_at FROM alert_outbox o"
         " LEFT JOIN alert_destinations d ON d.id = o.destination_id")  # fmt: skip
_KEYS = ("id", "regression_id", "destination_id", "destination", "kind", "rule_id", "event", "status", "attempts",
         "next_attempt_at", "last_error", "created_at", "sent_at")  # fmt: skip


def list_outbox(cur: StateCursor, *, status: str | None = None, regression_id: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
    """Deliveries, newest first, without payloads."""
    where, params = [], []
    for column, value in (("o.status", status), ("o.regression_id", regression_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = _LIST + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY o.created_at DESC, o.id LIMIT ?"
    return [dict(zip(_KEYS, r, strict=True)) for r in cur.execute(sql, [*params, limit]).fetchall()]
