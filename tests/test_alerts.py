"""Alert destinations and rules: the admin API, secrets never shown or logged, config-as-code, matching, the CLI."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_KEY, live_server
from support.alerting import add_destination, fast_settings, insert_regression, rows
from support.receiver import Receiver

from spanprism.api.alerts import config as alerts_config
from spanprism.api.alerts.delivery import backoff_s
from spanprism.api.alerts.destinations import load_destination
from spanprism.api.alerts.outbox import enqueue, plan
from spanprism.api.alerts.render import severity
from spanprism.api.alerts.rules import Rule
from spanprism.api.alerts.worker import Deliverer, enqueue_pass
from spanprism.api.cli import main
from spanprism.api.metrics import Metrics
from spanprism.api.storage.database import Database

SLACK_TOKEN = "T0SECRET/B0SECRET/slackTokenXYZ123"
ROUTING_KEY = "pd-routing-key-SECRET-0123456789ab"
HMAC_SECRET = "hmac-SECRET-do-not-leak-42"
API = "/api/v1/alerts"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


def _slack(receiver: Receiver, name: str = "team-slack") -> dict[str, Any]:
    return {"name": name, "kind": "slack", "secret": {"url": f"{receiver.url}/services/{SLACK_TOKEN}"},
            "options": {"trace_url_template": "https://tempo.example/trace/{trace_id}"}}  # fmt: skip


def _assert_no_secret(text: str) -> None:
    for secret in (SLACK_TOKEN, ROUTING_KEY, HMAC_SECRET, "slackTokenXYZ123"):
        assert secret not in text


def test_crud_and_status_codes(tmp_path, receiver):
    with live_server(tmp_path, services=[]) as live:
        c = live.client
        reader = c.post("/api/v1/keys", json={"name": "r", "scopes": ["read"]}).json()["key"]
        assert live.as_key(None).get(f"{API}/destinations").status_code == 401
        assert live.as_key(reader).get(f"{API}/destinations").status_code == 403
        assert live.as_key(reader).post(f"{API}/rules", json={}).status_code == 403
        created = c.post(f"{API}/destinations", json=_slack(receiver))
        assert created.status_code == 201, created.text
        dest = created.json()
        assert dest["origin"] == "api" and dest["has_secret"] and dest["secret"]["url"] == "http://127.0.0.1/…/****"
        assert c.post(f"{API}/destinations", json=_slack(receiver)).status_code == 409  # same name
        bad = [{"name": "x", "kind": "email", "secret": {}}, {"name": "x", "kind": "pagerduty", "secret": {}},
               {"name": "x", "kind": "slack", "secret": {"url": "ftp://nope"}},
               {"name": "x", "kind": "slack", "secret": {"url": "https://h"}, "options": {"colour": "red"}},
               ]  # fmt: skip
        for body in bad:
            assert c.post(f"{API}/destinations", json=body).status_code == 422, body
        assert c.get(f"{API}/destinations/nope").status_code == 404
        assert c.patch(f"{API}/destinations/nope", json={"name": "y"}).status_code == 404
        rule = {"name": "chat", "destination_id": dest["id"], "series": {"service": "chat-*"},
                "labels": ["cache_eviction"], "min_change_pct": 20, "min_confidence": 0.5}  # fmt: skip
        r = c.post(f"{API}/rules", json=rule)
        assert r.status_code == 201, r.text
        rule_id = r.json()["id"]
        for patch in ({"destination_id": "nope"}, {"labels": ["slow"]}, {"series": {"region": "eu"}},
                      {"min_confidence": 2}):  # fmt: skip
            assert c.patch(f"{API}/rules/{rule_id}", json=patch).status_code == 422, patch
        assert c.post(f"{API}/rules", json={**rule, "destination_id": "nope"}).status_code == 422
        assert c.patch(f"{API}/rules/{rule_id}", json={"enabled": False}).json()["enabled"] is False
        assert c.get(f"{API}/rules").json()["count"] == 1
        assert c.get(f"{API}/rules/nope").status_code == 404
        assert c.delete(f"{API}/destinations/{dest['id']}").status_code == 409  # a rule still uses it
        assert c.delete(f"{API}/rules/{rule_id}").status_code == 204
        assert c.delete(f"{API}/rules/{rule_id}").status_code == 404
        renamed = c.patch(f"{API}/destinations/{dest['id']}", json={"name": "renamed"}).json()
        assert renamed["name"] == "renamed" and renamed["secret"]["url"].endswith("****")
        assert c.delete(f"{API}/destinations/{dest['id']}").status_code == 204
        assert c.get(f"{API}/destinations").json() == {"data": [], "count": 0}
        assert c.get(f"{API}/outbox", params={"status": "bogus"}).status_code == 422


def test_secrets_never_in_api_responses_nor_logs(tmp_path, receiver, caplog):
    loggers = [logging.getLogger(n) for n in ("spanprism", "httpx", "uvicorn.error")]
    for logger in loggers:  # capture directly: logs.configure() may have turned propagation off
        logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    try:
        with live_server(tmp_path, services=[]) as live:
            c = live.client
            texts = [c.post(f"{API}/destinations", json=_slack(receiver)).text]
            pd = c.post(
                f"{API}/destinations",
                json={
                    "name": "pd",
                    "kind": "pagerduty",
                    "secret": {"routing_key": ROUTING_KEY},
                    "options": {"events_url": receiver.url + "/v2/enqueue"},
                },
            )
            hook = c.post(
                f"{API}/destinations",
                json={
                    "name": "hook",
                    "kind": "webhook",
                    "secret": {"url": f"{receiver.url}/hooks/{SLACK_TOKEN}", "hmac_secret": HMAC_SECRET},
                },
            )
            texts += [pd.text, hook.text, c.get(f"{API}/destinations").text]
            texts += [c.get(f"{API}/destinations/{pd.json()['id']}").text]
            new_secret = {"secret": {"routing_key": ROUTING_KEY}}
            texts += [c.patch(f"{API}/destinations/{pd.json()['id']}", json=new_secret).text]
            receiver.script = [(503, {})]
            texts += [c.post(f"{API}/destinations/team-slack/test").text]  # fails: 503 (error text is returned)
            texts += [c.post(f"{API}/destinations/{pd.json()['id']}/test").text]
            assert '"ok":true' in texts[-1]
            db = live.app.state.db
            for r in c.get(f"{API}/rules").json()["data"]:
                c.delete(f"{API}/rules/{r['id']}")
            c.post(f"{API}/rules", json={"name": "all", "destination_id": hook.json()["id"]}).raise_for_status()
            insert_regression(db, "reg-secret")
            receiver.script = [(500, {})]
            d = Deliverer(db, fast_settings(tmp_path / "x.duckdb"), Metrics())
            enqueue_pass(db)
            d.deliver_due()
            d.close()
            texts += [c.get(f"{API}/outbox").text]
        with db_at(tmp_path / "server.duckdb") as db2:  # the secret did reach the database (and the receiver)
            assert load_destination(db2.con, pd.json()["id"]).secret == {"routing_key": ROUTING_KEY}
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)
    for text in texts:
        _assert_no_secret(text)
    assert any(SLACK_TOKEN in r["path"] for r in receiver.requests)
    messages = [r.getMessage() + str(r.__dict__) for r in caplog.records]
    assert any("HTTP Request: POST" in m for m in messages) and any("alert retry" in m for m in messages)
    _assert_no_secret("\n".join(messages))


class db_at:
    """Open a Database for a block (after the server closed it)."""

    def __init__(self, path: Path) -> None:
        self.db = Database(path)

    def __enter__(self) -> Database:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


RECORD = {"id": "r1", "series": {"service": "chat-api", "provider": "openai", "model": "gpt-4o", "operation": "chat"},
          "status": "open", "change_pct": 40.0, "label": "cache_eviction", "confidence": 0.7}  # fmt: skip


@pytest.mark.parametrize(("rule", "matches"), [
    ({}, True),
    ({"series": {"service": "chat-*"}}, True),
    ({"series": {"service": "Chat-*"}}, False),  # case-sensitive globs
    ({"series": {"service": "chat-*", "model": "gpt-4o*", "provider": "openai"}}, True),
    ({"series": {"operation": "embeddings"}}, False),
    ({"series": {"tenant": "*"}}, False),  # no tenant in the series
    ({"labels": ["cache_eviction", "routing_change"]}, True),
    ({"labels": ["prefill_growth"]}, False),
    ({"min_change_pct": 40.0}, True),
    ({"min_change_pct": 40.1}, False),
    ({"min_confidence": 0.7}, True),
    ({"min_confidence": 0.71}, False),
    ({"enabled": False}, False),
])  # fmt: skip
def test_rule_matching(rule, matches):
    assert Rule(id="x", name="x", destination_id="d", **rule).matches(RECORD) is matches


def test_enqueue_policy_open_resolved_and_first_seen_resolved():
    rules = [Rule(id="a", name="a", destination_id="d1"), Rule(id="b", name="b", destination_id="d2",
                                                                 labels=["prefill_growth"])]  # fmt: skip
    resolved = {**RECORD, "id": "r2", "status": "resolved"}
    small = {**RECORD, "id": "r3", "change_pct": 5.0}  # below the reported-regression floor
    planned = plan([RECORD, resolved, small], rules, triggered={("r2", "d1"), ("r2", "d9")})
    assert [(p[0], p[1], p[3]) for p in planned] == [("r1", "d1", "trigger"), ("r2", "d1", "resolve"),
                                                     ("r2", "d9", "resolve")]  # fmt: skip
    assert plan([resolved], rules, triggered=set()) == []  # first seen already resolved: nothing


def test_a_withheld_regression_raises_nothing_and_resolves_a_page_it_raised_before():
    rules = [Rule(id="a", name="a", destination_id="d1")]
    withheld = {**RECORD, "evidence": [{"signal": "withheld", "reason": "own_size_drift"}]}
    assert plan([withheld], rules, triggered=set()) == []
    planned = plan([withheld], rules, triggered={("r1", "d1")})  # triggered while open, withheld on relabelling
    assert [(p[0], p[1], p[3]) for p in planned] == [("r1", "d1", "resolve")]


def test_overlapping_rules_and_reruns_queue_one_row(tmp_path):
    with db_at(tmp_path / "q.duckdb") as db:
        dest = add_destination(db, "slack", "https://hooks.slack.example/x")
        with db.write() as cur:
            cur.execute("INSERT INTO alert_rules (id, name, destination_id, created_at, updated_at)"
                        " VALUES ('dup', 'dup', ?, now(), now())", [dest])  # fmt: skip
        insert_regression(db, "reg-q")
        assert enqueue_pass(db) == 1
        assert enqueue_pass(db) == 0
        with db.write() as cur:
            assert enqueue(cur, [dict(RECORD, id="reg-q")], [Rule(id="z", name="z", destination_id=dest)]) == 0
        assert len(rows(db)) == 1


@pytest.mark.parametrize(("change", "expected"), [
    (250.0, "critical"), (100.0, "critical"), (99.9, "error"), (50.0, "error"), (20.0, "warning"), (12.0, "info"),
    (None, "info"),
])  # fmt: skip
def test_pagerduty_severity_follows_the_size_of_the_change(change, expected):
    assert severity(change) == expected


def test_backoff_is_exponential_with_full_jitter():
    rng = random.Random(42)
    draws = [[backoff_s(n, 1.0, 30.0, rng) for _ in range(200)] for n in (1, 2, 3, 6, 9)]
    caps = (1.0, 2.0, 4.0, 30.0, 30.0)
    for values, cap in zip(draws, caps, strict=True):
        assert min(values) >= 0.0 and max(values) <= cap and max(values) > 0.8 * cap  # spread over [0, cap]


CONFIG = """
log = "ignored by alerts"

[[alerts.destinations]]
name = "oncall"
kind = "pagerduty"
routing_key = "${PD_KEY}"
events_url = "${PD_URL}"
source = "spanprism-test"

[[alerts.destinations]]
name = "chat-room"
kind = "slack"
url = "https://hooks.slack.com/services/${SLACK_PATH}"

[[alerts.rules]]
name = "page on chat"
destination = "oncall"
series = { service = "chat-*" }
labels = ["cache_eviction"]
min_change_pct = 25
min_confidence = 0.5
"""


def test_config_as_code_with_env_substitution(tmp_path, monkeypatch, receiver):
    path = tmp_path / "spanprism.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("SPANPRISM_CONFIG", str(path))
    monkeypatch.setenv("PD_KEY", ROUTING_KEY)
    monkeypatch.setenv("PD_URL", receiver.url + "/v2/enqueue")
    monkeypatch.setenv("SLACK_PATH", SLACK_TOKEN)
    with live_server(tmp_path) as live:  # the default services: the alert worker syncs the config at start
        c = live.client
        api_dest = c.post(f"{API}/destinations", json=_slack(receiver, "api-made")).json()
        dests = {d["name"]: d for d in c.get(f"{API}/destinations").json()["data"]}
        assert dests["oncall"]["origin"] == "config" and dests["oncall"]["secret"] == {"routing_key": "****"}
        assert dests["oncall"]["options"] == {"events_url": receiver.url + "/v2/enqueue", "source": "spanprism-test"}
        assert dests["chat-room"]["secret"]["url"] == "https://hooks.slack.com/…/****"
        (rule,) = c.get(f"{API}/rules").json()["data"]
        assert rule["origin"] == "config" and rule["destination_id"] == dests["oncall"]["id"]
        assert rule["series"] == {"service": "chat-*"} and rule["min_change_pct"] == 25.0
        assert c.patch(f"{API}/destinations/{dests['oncall']['id']}", json={"name": "x"}).status_code == 409
        assert c.delete(f"{API}/rules/{rule['id']}").status_code == 409
        assert '"ok":true' in c.post(f"{API}/destinations/oncall/test").text
        _assert_no_secret(c.get(f"{API}/destinations").text)
    assert receiver.ok()[0]["body"].count(ROUTING_KEY.encode()) == 1  # substituted from the environment

    path.write_text(CONFIG.split("[[alerts.rules]]")[0].replace("spanprism-test", "renamed-source"))
    with db_at(tmp_path / "server.duckdb") as db:
        assert alerts_config.sync_from_env(db) == (2, 0)
        with db.read() as cur:
            oncall = load_destination(cur, dests["oncall"]["id"])  # same id across syncs
            assert oncall.options["source"] == "renamed-source" and oncall.secret["routing_key"] == ROUTING_KEY
            assert cur.execute("SELECT count(*) FROM alert_rules").fetchone()[0] == 0
            assert load_destination(cur, api_dest["id"]).origin == "api"  # API rows untouched
        monkeypatch.delenv("PD_KEY")
        with pytest.raises(alerts_config.ConfigError, match="PD_KEY"):
            alerts_config.sync_from_env(db)
        with db.read() as cur:  # a failed sync changes nothing
            assert cur.execute("SELECT count(*) FROM alert_destinations").fetchone()[0] == 3


def test_cli_list_test_outbox_and_deliver(tmp_path, receiver, capsys, monkeypatch):
    monkeypatch.delenv("SPANPRISM_CONFIG", raising=False)
    path = tmp_path / "server.duckdb"  # the file live_server(tmp_path) serves below
    with db_at(path) as db:
        add_destination(db, "webhook", f"{receiver.url}/hooks/{SLACK_TOKEN}", name="hook")
        insert_regression(db, "reg-cli")
    for var, value in (("ALERT_BACKOFF_BASE_S", "0.01"), ("ALERT_TIMEOUT_S", "2")):
        monkeypatch.setenv(f"SPANPRISM_{var}", value)
    assert main(["--db", str(path), "alerts", "list"]) == 0
    listed = capsys.readouterr().out
    assert "hook" in listed and "webhook" in listed and "all to webhook" in listed
    assert main(["--db", str(path), "alerts", "test", "hook"]) == 0
    assert main(["--db", str(path), "alerts", "test", "nope"]) == 1
    assert main(["--db", str(path), "alerts", "deliver"]) == 0
    assert "queued 1; sent 1" in capsys.readouterr().out
    assert main(["--db", str(path), "alerts", "deliver"]) == 0
    assert "queued 0; sent 0" in capsys.readouterr().out
    assert main(["--db", str(path), "alerts", "outbox", "--status", "sent"]) == 0
    out = capsys.readouterr().out
    assert "reg-cli" in out and "1 deliveries" in out
    _assert_no_secret(listed + out)
    assert [r["path"] for r in receiver.ok()] == [f"/hooks/{SLACK_TOKEN}"] * 2  # the test, then the real alert

    # While a server holds the file, the same commands go through its API.
    monkeypatch.setenv("SPANPRISM_API_KEY", ADMIN_KEY)
    with live_server(tmp_path, services=[]) as live:
        monkeypatch.setenv("SPANPRISM_URL", live.url)
        assert main(["--db", str(path), "alerts", "list"]) == 0
        remote = capsys.readouterr().out
        assert "hook" in remote and "all to webhook" in remote
        assert main(["--db", str(path), "alerts", "outbox", "--status", "sent"]) == 0
        assert "reg-cli" in capsys.readouterr().out
        assert main(["--db", str(path), "alerts", "test", "hook"]) == 0
        assert main(["--db", str(path), "alerts", "test", "nope"]) == 1
        assert main(["--db", str(path), "alerts", "deliver"]) == 0
        assert "delivers alerts itself" in capsys.readouterr().out
        _assert_no_secret(remote)
    assert len(receiver.ok()) == 3
