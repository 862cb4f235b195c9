"""Alert rules: which regressions alert where, and the ``alert_rules`` rows.

A rule matches a DESIGN.md regression record when every series glob matches (fields service, provider, model,
operation, tenant; ``fnmatch`` patterns, case-sensitive), its label is in ``labels`` (empty = any label), its
``change_pct`` is at least ``min_change_pct`` and its ``confidence`` at least ``min_confidence``.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import orjson

from spanprism.attribution.vocabulary import LABELS
from spanprism.models.state import StateCursor

SERIES_FIELDS = ("service", "provider", "model", "operation", "tenant")


class RuleError(ValueError):
    """A rule that cannot be stored as given."""


@dataclass
class Rule:
    """One ``alert_rules`` row."""

    id: str
    name: str
    destination_id: str
    series: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    min_change_pct: float = 0.0
    min_confidence: float = 0.0
    enabled: bool = True
    origin: str = "api"
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, record: dict[str, Any]) -> bool:
        """True when this (enabled) rule selects the regression ``record``."""
        if not self.enabled:
            return False
        series = record.get("series") or {}
        for key, pattern in self.series.items():
            value = series.get(key)
            if value is None or not fnmatchcase(str(value), pattern):
                return False
        if self.labels and record.get("label") not in self.labels:
            return False
        change = record.get("change_pct")
        if change is None or change < self.min_change_pct:
            return False
        return (record.get("confidence") or 0.0) >= self.min_confidence


def validate(*, series: dict[str, str], labels: list[str], min_change_pct: float, min_confidence: float) -> None:
    """Raise :class:`RuleError` for unknown series fields or labels and out-of-range thresholds."""
    unknown = sorted(set(series) - set(SERIES_FIELDS))
    if unknown:
        raise RuleError(f"unknown series field(s) {unknown}; choose from {', '.join(SERIES_FIELDS)}")
    bad = sorted(set(labels) - set(LABELS))
    if bad:
        raise RuleError(f"unknown label(s) {bad}; choose from {', '.join(LABELS)}")
    if min_change_pct < 0:
        raise RuleError("min_change_pct must be ≥ 0")
    if not 0.0 <= min_confidence <= 1.0:
        raise RuleError("min_confidence must be between 0 and 1")


_COLUMNS = ("id, name, destination_id, series, labels, min_change_pct, min_confidence, enabled, origin, "
            "created_at, updated_at")  # fmt: skip


def _row(r: tuple) -> Rule:
    return Rule(id=r[0], name=r[1], destination_id=r[2], series=orjson.loads(r[3]), labels=orjson.loads(r[4]),
                min_change_pct=r[5], min_confidence=r[6], enabled=bool(r[7]), origin=r[8], created_at=r[9],
                updated_at=r[10])  # fmt: skip


def list_rules(cur: StateCursor, *, enabled_only: bool = False) -> list[Rule]:
    """Every rule (or only the enabled ones), oldest first (the first matching rule names a delivery)."""
    where = " WHERE enabled" if enabled_only else ""
    rows = cur.execute(f"SELECT {_COLUMNS} FROM alert_rules{where} ORDER BY created_at, id").fetchall()
    return [_row(r) for r in rows]


def get_rule(cur: StateCursor, rule_id: str) -> Rule | None:
    row = cur.execute(f"SELECT {_COLUMNS} FROM alert_rules WHERE id = ?", [rule_id]).fetchone()
    return None if row is None else _row(row)


def insert_rule(cur: StateCursor, rule: Rule) -> str:
    """Validate and store ``rule`` (a new id unless it has one); the destination must exist."""
    validate(series=rule.series, labels=rule.labels, min_change_pct=rule.min_change_pct,
             min_confidence=rule.min_confidence)  # fmt: skip
    if cur.execute("SELECT 1 FROM alert_destinations WHERE id = ?", [rule.destination_id]).fetchone() is None:
        raise RuleError(f"no destination {rule.destination_id}")
    rule.id = rule.id or "rul_" + secrets.token_hex(6)
    now = datetime.now(UTC)
    cur.execute(f"INSERT INTO alert_rules ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [rule.id, rule.name, rule.destination_id, orjson.dumps(rule.series).decode(),
                 orjson.dumps(rule.labels).decode(), rule.min_change_pct, rule.min_confidence, rule.enabled,
                 rule.origin, now, now])  # fmt: skip
    return rule.id


def update_rule(cur: StateCursor, rule_id: str, changes: dict[str, Any]) -> Rule | None:
    """Apply ``changes`` (any of the editable fields) and return the new rule, None when there is no such row."""
    rule = get_rule(cur, rule_id)
    if rule is None:
        return None
    for key, value in changes.items():
        setattr(rule, key, value)
    validate(series=rule.series, labels=rule.labels, min_change_pct=rule.min_change_pct,
             min_confidence=rule.min_confidence)  # fmt: skip
    if cur.execute("SELECT 1 FROM alert_destinations WHERE id = ?", [rule.destination_id]).fetchone() is None:
        raise RuleError(f"no destination {rule.destination_id}")
    rule.updated_at = datetime.now(UTC)
    cur.execute("UPDATE alert_rules SET name = ?, destination_id = ?, series = ?, labels = ?, min_change_pct = ?,"
                " min_confidence = ?, enabled = ?, updated_at = ? WHERE id = ?",
                [rule.name, rule.destination_id, orjson.dumps(rule.series).decode(),
                 orjson.dumps(rule.labels).decode(), rule.min_change_pct, rule.min_confidence, rule.enabled,
                 rule.updated_at, rule_id])  # fmt: skip
    return rule


def delete_rule(cur: StateCursor, rule_id: str) -> bool:
    return cur.execute("DELETE FROM alert_rules WHERE id = ? RETURNING id", [rule_id]).fetchone() is not None
