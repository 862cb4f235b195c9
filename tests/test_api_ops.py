"""Operations endpoints and API keys against the real server."""

from __future__ import annotations

from conftest import ADMIN_KEY
from support.alerting import insert_regression, resolve

from spanprism.api.cli import main


def test_health_ready_metrics(server):
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = server.client.get("/metrics").text
    assert "spanprism_spans_received_total" in text and "spanprism_ingest_queue_spans" in text


def test_metrics_count_open_regressions_by_label(server):
    db = server.app.state.db
    insert_regression(db, "r1", label="cache_eviction")
    insert_regression(db, "r2", label="cache_eviction", service="search")
    insert_regression(db, "r3", label="routing_change")
    insert_regression(db, "r4", label="routing_change", change_pct=4.0)  # below the reporting bar: not counted
    resolve(db, "r3")
    text = server.client.get("/metrics").text
    assert 'spanprism_open_regressions{label="cache_eviction"} 2.0' in text
    assert 'label="routing_change"' not in text


def test_keys_scopes_and_revocation(server):
    anon = server.as_key(None)
    assert anon.get("/api/v1/keys").status_code == 401
    assert server.as_key("spk_nope_x").get("/api/v1/keys").status_code == 401
    created = server.client.post("/api/v1/keys", json={"name": "ci", "scopes": ["read"]})
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("spk_") and body["scopes"] == ["read"]
    reader = server.as_key(body["key"])
    assert reader.get("/api/v1/keys").status_code == 403  # read is not admin
    listed = server.client.get("/api/v1/keys").json()
    assert listed["count"] == 1 and "key" not in listed["data"][0] and "key_hash" not in listed["data"][0]
    assert reader.get("/api/v1/series").status_code == 200  # now remembered by the principal cache
    assert server.client.delete(f"/api/v1/keys/{body['id']}").status_code == 204
    assert reader.get("/api/v1/series").status_code == 401  # revocation empties the cache at once
    assert server.client.delete(f"/api/v1/keys/{body['id']}").status_code == 404
    bad = server.client.post("/api/v1/keys", json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 422


def test_cli_keys(tmp_path, capsys):
    db = str(tmp_path / "k.duckdb")
    assert main(["--db", db, "keys", "create", "--scope", "read,ingest", "--name", "collector"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("spk_")
    assert main(["--db", db, "keys", "create", "--scope", "root"]) == 2
    assert main(["--db", db, "keys", "list"]) == 0
    assert "collector" in capsys.readouterr().out


def test_cli_keys_through_the_server(server, capsys, monkeypatch):
    monkeypatch.setenv("SPANPRISM_URL", server.url)
    monkeypatch.setenv("SPANPRISM_API_KEY", ADMIN_KEY)
    assert main(["keys", "create", "--scope", "ingest", "--name", "collector"]) == 0
    plain = capsys.readouterr().out.strip().splitlines()[-1]
    assert plain.startswith("spk_")
    key_id = plain[4:].split("_", 1)[0]
    with server.as_key(plain) as collector:  # the printed key works on the server
        assert collector.get("/api/v1/keys").status_code == 403
    assert main(["keys", "list"]) == 0
    assert "collector" in capsys.readouterr().out
    assert main(["keys", "revoke", "--id", key_id]) == 0
    assert main(["keys", "revoke", "--id", key_id]) == 1
    monkeypatch.setenv("SPANPRISM_API_KEY", plain)
    assert main(["keys", "list"]) == 1  # a revoked key is refused
