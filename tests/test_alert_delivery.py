"""Alert delivery against real HTTP receivers on 127.0.0.1: payload contracts, retries, restarts, exactly-once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from conftest import live_server
from support.alerting import EXEMPLAR, add_destination, fast_settings, insert_regression, resolve, rows
from support.receiver import Receiver

from spanprism.api.alerts.delivery import retry_after
from spanprism.api.alerts.webhook import verify_signature
from spanprism.api.alerts.worker import AlertWorker, Deliverer, enqueue_pass
from spanprism.api.metrics import Metrics
from spanprism.api.storage.database import Database


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


def drain(deliverer: Deliverer, done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Deliver rounds until ``done()`` (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "delivery did not finish in time"
        deliverer.deliver_due()
        time.sleep(0.02)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "alerts.duckdb")
    yield database
    database.close()


@pytest.fixture
def deliverer(db: Database, tmp_path: Path) -> Iterator[Deliverer]:
    d = Deliverer(db, fast_settings(tmp_path / "alerts.duckdb"), Metrics())
    yield d
    d.close()


def _text_objects(block: dict[str, Any]) -> list[dict[str, Any]]:
    texts = [block["text"]] if "text" in block else []
    texts += block.get("fields", [])
    texts += [e for e in block.get("elements", []) if e.get("type") in ("mrkdwn", "plain_text")]
    texts += [e["text"] for e in block.get("elements", []) if e.get("type") == "button"]
    return texts


def assert_block_kit(message: dict[str, Any]) -> None:
    """Structural Block Kit checks (types, text objects, sizes) of an incoming-webhook message."""
    assert isinstance(message["text"], str) and message["text"]
    blocks = message["blocks"]
    assert 0 < len(blocks) <= 50
    for block in blocks:
        assert block["type"] in {"section", "context", "actions", "divider"}, block
        if block["type"] == "section":
            assert "text" in block or "fields" in block
            assert len(block.get("fields", [])) <= 10
        if block["type"] == "actions":
            assert 0 < len(block["elements"]) <= 25
            for el in block["elements"]:
                assert el["type"] == "button" and el["url"].startswith("https://") and len(el["text"]["text"]) <= 75
        if block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
        for text in _text_objects(block):
            assert text["type"] in {"mrkdwn", "plain_text"} and isinstance(text["text"], str)
            assert 0 < len(text["text"]) <= 3000


def test_slack_message_is_block_kit_with_links_and_a_resolve_follow_up(db, deliverer, receiver):
    add_destination(db, "slack", receiver.url + "/services/T000/B000/XXXX")
    insert_regression(db, "reg-slack")
    assert enqueue_pass(db) == 1
    drain(deliverer, lambda: len(receiver.ok()) == 1)
    message = orjson.loads(receiver.ok()[0]["body"])
    assert_block_kit(message)
    flat = json.dumps(message, ensure_ascii=False)
    assert "chat-api" in flat and "812 → 1,650" in flat and "prefill_growth" in flat and "90%" in flat
    assert "`prefill_growth` +610 ms" in flat
    assert f"https://tempo.example/trace/{EXEMPLAR['trace_id']}" in flat
    assert "https://spanprism.example/regressions/reg-slack" in flat  # the web page, not the JSON
    resolve(db, "reg-slack")
    assert enqueue_pass(db) == 1
    drain(deliverer, lambda: len(receiver.ok()) == 2)
    follow_up = orjson.loads(receiver.ok()[1]["body"])
    assert_block_kit(follow_up)
    assert "Resolved" in follow_up["text"] and "Resolved" in follow_up["blocks"][0]["text"]["text"]


def test_pagerduty_trigger_and_resolve_follow_events_v2(db, deliverer, receiver):
    add_destination(db, "pagerduty", receiver.url + "/v2/enqueue")
    insert_regression(db, "reg-pd", change_pct=60.0)
    receiver.default = (202, {})  # PagerDuty answers 202 Accepted
    enqueue_pass(db)
    drain(deliverer, lambda: len(receiver.ok()) == 1)
    resolve(db, "reg-pd")
    enqueue_pass(db)
    drain(deliverer, lambda: len(receiver.ok()) == 2)
    trigger, resolved = (orjson.loads(r["body"]) for r in receiver.ok())
    assert receiver.ok()[0]["path"] == "/v2/enqueue"
    assert trigger["routing_key"] == "R0UT1NGKEY0123456789abcdef01234" and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "reg-pd" == resolved["dedup_key"]
    payload = trigger["payload"]
    assert payload["summary"] and len(payload["summary"]) <= 1024 and payload["source"] == "chat-api"
    assert payload["severity"] == "error"
    assert payload["custom_details"]["label"] == "prefill_growth"
    assert payload["custom_details"]["contributions_ms"]["prefill_growth"] == 610.0
    assert set(resolved) == {"routing_key", "event_action", "dedup_key"} and resolved["event_action"] == "resolve"


def test_webhook_signature_verifies_and_replays_are_rejected(db, deliverer, receiver):
    add_destination(db, "webhook", receiver.url + "/hook")
    insert_regression(db, "reg-wh")
    enqueue_pass(db)
    drain(deliverer, lambda: len(receiver.ok()) == 1)
    req = receiver.ok()[0]
    body, ts, sig = req["body"], req["headers"]["x-spanprism-timestamp"], req["headers"]["x-spanprism-signature"]
    record = orjson.loads(body)
    assert record["event"] == "trigger" and record["id"] == "reg-wh" and record["label"] == "prefill_growth"
    assert record["series"] == {"service": "chat-api", "provider": "openai", "model": "gpt-4o", "operation": "chat"}
    assert record["links"] == {"page": "https://spanprism.example/regressions/reg-wh",
                               "api": "https://spanprism.example/api/v1/regressions/reg-wh"}  # fmt: skip
    assert sig.startswith("sha256=") and abs(int(ts) - time.time()) < 60
    assert verify_signature("whsec-test-0123", ts, body, sig)
    assert not verify_signature("wrong-secret", ts, body, sig)
    assert not verify_signature("whsec-test-0123", ts, body + b" ", sig)
    assert not verify_signature("whsec-test-0123", str(int(ts) + 1), body, sig)
    assert not verify_signature("whsec-test-0123", ts, body, sig, tolerance_s=300, now=int(ts) + 301)  # replayed
    assert verify_signature("whsec-test-0123", ts, body, sig, tolerance_s=300, now=int(ts) + 299)


def test_receiver_down_then_up_is_delivered_exactly_once(db, deliverer):
    down = Receiver()  # nothing listens on its port yet: connection refused
    add_destination(db, "webhook", down.url + "/hook")
    insert_regression(db, "reg-down")
    enqueue_pass(db)
    assert deliverer.deliver_due()["retry"] == 1  # one attempt per row and round
    (row,) = rows(db)
    assert row["status"] == "pending" and row["attempts"] == 1 and "ConnectError" in row["last_error"]
    down.script = [(503, {}), (503, {})]
    down.start()
    try:
        drain(deliverer, lambda: rows(db)[0]["status"] == "sent")
        for _ in range(5):
            enqueue_pass(db)
            deliverer.deliver_due()
        assert [r["status"] for r in down.requests] == [503, 503, 200]
        assert rows(db)[0]["attempts"] == 4
        assert deliverer.metrics.alerts.labels("webhook", "retry")._value.get() == 3
    finally:
        down.stop()


def test_retry_after_is_honoured(db, deliverer, receiver):
    add_destination(db, "webhook", receiver.url + "/hook")
    insert_regression(db, "reg-429")
    receiver.script = [(429, {"Retry-After": "30"})]
    enqueue_pass(db)
    before = datetime.now(UTC)
    assert deliverer.deliver_due()["retry"] == 1
    (row,) = rows(db)
    assert row["next_attempt_at"] >= before + timedelta(seconds=29)
    assert deliverer.deliver_due() == {"sent": 0, "retry": 0, "failed": 0, "expired": 0}
    assert len(receiver.requests) == 1
    when = datetime(2030, 1, 1, tzinfo=UTC)
    assert retry_after("Tue, 01 Jan 2030 00:00:10 GMT", now=when) == 10.0
    assert retry_after("soon") is None and retry_after(None) is None


def test_restart_mid_retry_delivers_exactly_once(tmp_path):
    path = tmp_path / "restart.duckdb"
    rec = Receiver().start()
    rec.default = (503, {})
    try:
        db1 = Database(path)
        dest = add_destination(db1, "webhook", rec.url + "/hook")
        insert_regression(db1, "reg-restart")
        d1 = Deliverer(db1, fast_settings(path), Metrics())
        enqueue_pass(db1)
        drain(d1, lambda: rows(db1)[0]["attempts"] >= 2)
        d1.close()
        db1.close()  # the server goes away mid-retry

        rec.default = (200, {})
        db2 = Database(path)
        worker = AlertWorker(fast_settings(path), db2, Metrics(), SimpleNamespace())
        worker.start()  # enqueues again at start (re-enqueue must not duplicate) and delivers
        try:
            deadline = time.monotonic() + 10
            while len(rec.ok()) < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            resolve(db2, "reg-restart")
            worker.after_pass({"status": "succeeded"})  # what the JobRunner calls after a pass
            while len(rec.ok()) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # several more polls: nothing else may go out
        finally:
            worker.stop()
        assert [orjson.loads(r["body"])["event"] for r in rec.ok()] == ["trigger", "resolve"]
        assert enqueue_pass(db2) == 0
        assert {(r["event"], r["status"], r["destination_id"]) for r in rows(db2)} == {
            ("trigger", "sent", dest), ("resolve", "sent", dest)}  # fmt: skip
        db2.close()
    finally:
        rec.stop()


def test_client_error_fails_without_retry_and_blocks_the_resolve(db, deliverer, receiver):
    add_destination(db, "slack", receiver.url + "/services/x")
    insert_regression(db, "reg-400")
    receiver.default = (400, {})
    enqueue_pass(db)
    assert deliverer.deliver_due()["failed"] == 1
    resolve(db, "reg-400")
    enqueue_pass(db)
    deliverer.deliver_due()
    assert len(receiver.requests) == 1
    by_event = {r["event"]: r for r in rows(db)}
    assert by_event["trigger"]["status"] == "failed" and by_event["trigger"]["attempts"] == 1
    assert by_event["trigger"]["last_error"].startswith("HTTP 400")
    assert by_event["resolve"]["status"] == "failed"
    assert by_event["resolve"]["last_error"] == "trigger was not delivered"


def test_gives_up_after_max_age(db, tmp_path, receiver):
    receiver.default = (503, {})
    d = Deliverer(db, fast_settings(tmp_path / "alerts.duckdb", alert_max_age_s=0.3), Metrics())
    try:
        add_destination(db, "webhook", receiver.url + "/hook")
        insert_regression(db, "reg-old")
        enqueue_pass(db)
        drain(d, lambda: rows(db)[0]["status"] != "pending")
        assert rows(db)[0]["status"] == "expired" and 1 <= len(receiver.requests) <= 40
        assert d.metrics.alerts.labels("webhook", "expired")._value.get() == 1
    finally:
        d.close()


def test_resolve_is_not_sent_before_its_trigger(db, deliverer, receiver):
    add_destination(db, "webhook", receiver.url + "/hook")
    insert_regression(db, "reg-order")
    receiver.default = (503, {})
    enqueue_pass(db)
    deliverer.deliver_due()
    resolve(db, "reg-order")
    enqueue_pass(db)
    for _ in range(5):
        deliverer.deliver_due()
        time.sleep(0.03)
    assert {orjson.loads(r["body"])["event"] for r in receiver.requests} == {"trigger"}
    receiver.default = (200, {})
    drain(deliverer, lambda: len(receiver.ok()) == 2)
    assert [orjson.loads(r["body"])["event"] for r in receiver.ok()] == ["trigger", "resolve"]


def test_served_app_worker_alerts_after_an_attribution_pass(tmp_path, receiver):
    with live_server(tmp_path, alert_poll_s=0.05, alert_backoff_base_s=0.02, alert_backoff_max_s=0.1) as live:
        db = live.app.state.db
        assert live.app.state.alert_worker.after_pass in live.app.state.job_runner.after_pass
        dest = live.client.post(
            "/api/v1/alerts/destinations",
            json={
                "name": "hook",
                "kind": "webhook",
                "secret": {"url": receiver.url + "/h", "hmac_secret": "s3cr3t-hmac"},
            },
        )
        assert dest.status_code == 201, dest.text
        rule = {"name": "chat", "destination_id": dest.json()["id"], "series": {"service": "chat-*"}}
        live.client.post("/api/v1/alerts/rules", json=rule).raise_for_status()
        insert_regression(db, "reg-live")
        insert_regression(db, "reg-other", service="batch-jobs")
        db.bump_generation()  # what a finished attribution pass does
        deadline = time.monotonic() + 10
        # The receiver records a request before it answers, and the worker marks the row sent after the answer:
        # wait for the outbox row, not for the receiver.
        page = live.client.get("/api/v1/alerts/outbox", params={"status": "sent"}).json()
        while not page["count"] and time.monotonic() < deadline:
            time.sleep(0.02)
            page = live.client.get("/api/v1/alerts/outbox", params={"status": "sent"}).json()
        assert page["count"] == 1 and page["data"][0]["regression_id"] == "reg-live"
        assert page["data"][0]["destination"] == "hook" and page["data"][0]["kind"] == "webhook"
        assert [orjson.loads(r["body"])["id"] for r in receiver.ok()] == ["reg-live"]
        metrics = live.client.get("/metrics").text
        assert 'spanprism_alert_deliveries_total{kind="webhook",outcome="sent"} 1.0' in metrics


def test_a_triggered_regression_that_disappears_is_resolved_once(db, deliverer, receiver):
    add_destination(db, "webhook", receiver.url + "/hook")
    insert_regression(db, "reg-gone")
    enqueue_pass(db)
    drain(deliverer, lambda: len(receiver.ok()) == 1)
    with db.write() as cur:  # what a re-detection that no longer finds the episode leaves behind
        cur.execute("DELETE FROM regression_attributions WHERE regression_id = 'reg-gone'")
        cur.execute("DELETE FROM regressions WHERE id = 'reg-gone'")
    assert enqueue_pass(db) == 1
    assert enqueue_pass(db) == 0
    drain(deliverer, lambda: len(receiver.ok()) == 2)
    resolved = orjson.loads(receiver.ok()[1]["body"])
    assert (resolved["event"], resolved["id"], resolved["status"], resolved["withdrawn"]) == (
        "resolve",
        "reg-gone",
        "resolved",
        True,
    )
