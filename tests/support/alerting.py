"""Alert-delivery test helpers: fast settings, regressions and destinations inserted straight into a file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from spanprism.api.alerts import outbox
from spanprism.api.alerts.destinations import insert_destination
from spanprism.api.alerts.rules import Rule, insert_rule
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database

EXEMPLAR = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}


def fast_settings(path: Path, **overrides: Any) -> Settings:
    """Small backoff so retries finish in milliseconds."""
    values: dict[str, Any] = {"db": path, "alert_backoff_base_s": 0.02, "alert_backoff_max_s": 0.1,
                              "alert_timeout_s": 2.0, "alert_max_age_s": 60.0, "alert_poll_s": 0.05,
                              "public_url": "https://spanprism.example",
                              "trace_url_template": "https://tempo.example/trace/{trace_id}"}  # fmt: skip
    return Settings(**{**values, **overrides})


def insert_regression(db: Database, rid: str, *, status: str = "open", change_pct: float = 103.2,
                      label: str = "prefill_growth", service: str = "chat-api",
                      confidence: float = 0.9) -> None:  # fmt: skip
    """A regression plus its attribution, written straight into the tables list_regressions reads."""
    now = datetime.now(UTC)
    start = now - timedelta(hours=1)
    contributions = {"prefill_growth": 610.0, "cache_eviction": 35.0, "batch_contention": 20.0,
                     "routing_change": 0.0, "output_growth": 5.0, "residual": 168.0}  # fmt: skip
    with db.state.write() as cur:
        cur.execute("DELETE FROM regressions WHERE id = ?", [rid])
        cur.execute("DELETE FROM regression_attributions WHERE regression_id = ?", [rid])
        cur.execute(
            "INSERT INTO regressions (id, series_key, service, provider, request_model, operation, start_time,"
            " detected_at, end_time, status, metric, baseline, observed, change_pct, metrics, updated_at)"
            " VALUES (?, ?, ?, 'openai', 'gpt-4o', 'chat', ?, ?, ?, ?, 'ttft_p95_ms', 812.0, ?, ?, '[]', ?)",
            [rid, f"{service}|openai|gpt-4o|chat", service, start, start, None if status == "open" else now, status,
             812.0 * (1 + change_pct / 100), change_pct, now])  # fmt: skip
        cur.execute(
            "INSERT INTO regression_attributions (regression_id, label, reason, confidence, contributions_ms,"
            " evidence, exemplars, model_version, attributed_at) VALUES (?, ?, 'prompt_changed', ?, ?, '[]', ?,"
            " 'test', ?)",
            [rid, label, confidence, json.dumps(contributions), json.dumps([EXEMPLAR]), now],
        )


def resolve(db: Database, rid: str) -> None:
    with db.state.write() as cur:
        cur.execute("UPDATE regressions SET status = 'resolved', end_time = ? WHERE id = ?", [datetime.now(UTC), rid])


def add_destination(db: Database, kind: str, url: str, *, name: str | None = None) -> str:
    """A destination of ``kind`` pointed at ``url`` plus a catch-all rule; returns the destination id."""
    secret = {"slack": {"url": url}, "pagerduty": {"routing_key": "R0UT1NGKEY0123456789abcdef01234"},
              "webhook": {"url": url, "hmac_secret": "whsec-test-0123"}}[kind]  # fmt: skip
    options = {"events_url": url} if kind == "pagerduty" else {}
    with db.state.write() as cur:
        dest_id = insert_destination(cur, name=name or kind, kind=kind, options=options, secret=secret)
        insert_rule(cur, Rule(id="", name=f"all to {kind}", destination_id=dest_id))
    return dest_id


def rows(db: Database) -> list[dict[str, Any]]:
    with db.state.read() as cur:
        return outbox.list_outbox(cur, limit=1000)
