"""Export upload, the batch log, quarantine (list, raw bytes, re-drive) and CLI ingest through a running server.

Uploads are real export files (gzip OTLP JSON lines built from SDK spans) streamed to a live server. Re-drive is
checked with records an *older* version quarantined (inserted as such: the current code would not quarantine
them), so "now parses" is real, next to records that still fail. CLI parity runs ``spanprism serve`` as a
subprocess, which holds the DuckDB file, and the CLI in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_KEY, Live
from support.otlp_spans import new_key, stored
from support.uploads import BIN, export_file, upload

from spanprism.api import cli
from spanprism.api.server import free_port, wait_healthy


def test_upload_is_ingested_and_logged_as_batches(server: Live, tmp_path: Path) -> None:
    path = export_file(tmp_path / "a.jsonl.gz", seed=1, model="m-upload")
    with server.as_key(new_key(server, "ingest")) as client:
        first = upload(client, path, "exports/a.jsonl.gz")
        assert first.status_code == 200, first.text
        assert first.json() == {
            "spans_seen": 6,
            "calls_stored": 5,
            "duplicates": 0,
            "non_llm_skipped": 0,
            "quarantined": 1,
            "conventions": {"otel_semconv": 5},
            "batches": 1,
            "errors": [],
        }
        again = upload(client, path, "exports/a.jsonl.gz").json()
        assert (again["calls_stored"], again["duplicates"]) == (0, 5)
    assert len(stored(server, "m-upload")) == 5
    listing = server.client.get("/api/v1/ingest/batches").json()
    assert listing["count"] == 2
    assert {b["source"] for b in listing["data"]} == {"upload:exports/a.jsonl.gz"}
    assert listing["data"][0]["conventions"] == {"otel_semconv": 5}
    page = server.client.get("/api/v1/ingest/batches", params={"limit": 1, "offset": 1}).json()
    assert (len(page["data"]), page["count"], page["data"][0]["id"]) == (1, 2, listing["data"][1]["id"])
    now = datetime.now(UTC)
    future = server.client.get("/api/v1/ingest/batches", params={"since": (now + timedelta(hours=1)).isoformat()})
    assert future.json()["count"] == 0
    window = {"since": (now - timedelta(hours=1)).isoformat(), "until": (now + timedelta(hours=1)).isoformat()}
    assert server.client.get("/api/v1/ingest/batches", params=window).json()["count"] == 2
    too_long = {"since": (now - timedelta(days=400)).isoformat(), "until": now.isoformat()}
    assert server.client.get("/api/v1/ingest/batches", params=too_long).status_code == 422
    bad = server.client.get("/api/v1/quarantine", params={"source": "upload:exports/a.jsonl.gz"}).json()
    assert bad["count"] == 2 and {r["location"] for r in bad["data"]} == {"line 3"}


def test_upload_needs_the_ingest_scope_and_respects_the_size_limit(make_server, tmp_path: Path) -> None:
    path = export_file(tmp_path / "big.jsonl.gz", seed=2, model="m-big", n=80)
    assert path.stat().st_size > 3000
    with make_server(max_body_bytes=3000) as live:
        with live.as_key(new_key(live, "read")) as reader:
            assert upload(reader, path, "big").status_code == 403
        assert upload(live.client, path, "big").status_code == 413  # streamed: no Content-Length
        declared = live.client.post("/api/v1/ingest", content=path.read_bytes())
        assert declared.status_code == 413
        assert live.client.get("/api/v1/ingest/batches").json()["count"] == 0


def test_quarantine_list_filters_and_raw_bytes(server: Live, legacy: dict[str, bytes]) -> None:
    listing = server.client.get("/api/v1/quarantine", params={"batch": "legacy-batch"}).json()
    assert listing["count"] == 4
    assert {r["id"]: r["raw_bytes"] for r in listing["data"]} == {k: len(v) for k, v in legacy.items()}
    assert all("raw" not in r and r["reason"] == "an old bug" and r["redriven_at"] is None for r in listing["data"])
    assert server.client.get("/api/v1/quarantine", params={"reason": "OLD BUG", "limit": 1}).json()["count"] == 4
    assert server.client.get("/api/v1/quarantine", params={"reason": "nope"}).json()["count"] == 0
    for record_id, raw in legacy.items():
        reply = server.client.get(f"/api/v1/quarantine/{record_id}/raw")
        assert (reply.status_code, reply.content) == (200, raw)
        assert reply.headers["content-type"] == "application/octet-stream"
    assert server.client.get("/api/v1/quarantine/nope/raw").status_code == 404
    with server.as_key(new_key(server, "read")) as reader:
        assert reader.get("/api/v1/quarantine").json()["count"] == 4
        assert reader.get("/api/v1/quarantine/line/raw").status_code == 403
        assert reader.post("/api/v1/quarantine/redrive", json={"ids": ["line"]}).status_code == 403


def test_redrive_stores_what_now_parses_and_updates_the_rest(server: Live, legacy: dict[str, bytes]) -> None:
    assert server.client.post("/api/v1/quarantine/redrive", json={}).status_code == 422
    by_ids = server.client.post("/api/v1/quarantine/redrive", json={"ids": ["span-json", "line"]}).json()
    assert {k: by_ids[k] for k in ("selected", "redriven", "still_failing", "calls_stored")} == {
        "selected": 2,
        "redriven": 2,
        "still_failing": 0,
        "calls_stored": 2,
    }
    by_filter = server.client.post("/api/v1/quarantine/redrive", json={"filter": {"batch": "legacy-batch"}}).json()
    assert {k: by_filter[k] for k in ("selected", "redriven", "still_failing", "calls_stored")} == {
        "selected": 2,
        "redriven": 1,
        "still_failing": 1,
        "calls_stored": 1,
    }
    rows = stored(server, "m-redrive")
    assert len(rows) == 3
    assert all(tokens >= 1000 for _, _, tokens, _, _ in rows.values())
    # The whole line kept its resource; spans quarantined alone have none (documented limitation).
    assert sorted(service or "" for service, *_ in rows.values()) == ["", "", "redrive-svc"]
    records = {r["id"]: r for r in server.client.get("/api/v1/quarantine", params={"batch": "legacy-batch"})
               .json()["data"]}  # fmt: skip
    assert [k for k, r in sorted(records.items()) if r["redriven_at"]] == ["line", "span-json", "span-proto"]
    assert records["broken"]["reason"].startswith("truncated JSON")
    pending = server.client.get("/api/v1/quarantine", params={"redriven": "false"}).json()
    assert [r["id"] for r in pending["data"]] == ["broken"]
    batch = server.client.get("/api/v1/ingest/batches", params={"source": "redrive"}).json()
    assert [b["calls_stored"] for b in batch["data"]] == [1, 2]
    again = server.client.post("/api/v1/quarantine/redrive", json={"ids": ["line"], "include_redriven": True}).json()
    assert (again["redriven"], again["calls_stored"], again["duplicates"]) == (1, 0, 1)


@pytest.fixture
def served(tmp_path: Path):
    """``spanprism serve`` in a subprocess over its own DuckDB file (it holds the file's lock)."""
    port, db = free_port(), tmp_path / "served.duckdb"
    log = (tmp_path / "serve.log").open("wb")
    env = {**os.environ, "SPANPRISM_ADMIN_KEY": ADMIN_KEY, "SPANPRISM_INGEST_WORKERS": "1"}
    proc = subprocess.Popen([str(BIN), "--db", str(db), "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(url, alive=lambda: proc.poll() is None), (tmp_path / "serve.log").read_text()
        yield url, port, db
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_cli_ingest_goes_through_the_running_server(served, tmp_path: Path, monkeypatch, capsys) -> None:
    url, port, db = served
    for var in ("SPANPRISM_URL", "SPANPRISM_CONFIG", "SPANPRISM_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPANPRISM_API_KEY", ADMIN_KEY)
    monkeypatch.setenv("SPANPRISM_PORT", str(port))
    locked = export_file(tmp_path / "locked.jsonl.gz", seed=4, model="m-cli")
    assert cli.main(["--db", str(db), "ingest", "--json", str(locked)]) == 0
    out, err = capsys.readouterr()
    assert "held by a running server" in err and url in err
    assert json.loads(out)["calls_stored"] == 5 and json.loads(out)["quarantined"] == 1
    # Reading regressions while the server holds the file goes through it too (none yet: no pass has run).
    assert cli.main(["--db", str(db), "regressions", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    monkeypatch.setenv("SPANPRISM_URL", url)
    second = export_file(tmp_path / "second.jsonl.gz", seed=5, model="m-cli", n=3, bad_line=False)
    assert cli.main(["--db", str(tmp_path / "unused.duckdb"), "ingest", "--json", str(second), str(locked)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["calls_stored"], summary["duplicates"], summary["batches"]) == (3, 5, 2)
    assert not (tmp_path / "unused.duckdb").exists()  # nothing local was opened

    monkeypatch.setenv("SPANPRISM_API_KEY", "spk_wrong")
    assert cli.main(["ingest", str(second)]) == 1
    assert "answered 401" in capsys.readouterr().err
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as client:
        sources = {b["source"] for b in client.get("/api/v1/ingest/batches").json()["data"]}
    assert sources == {f"upload:{locked}", f"upload:{second}"}
