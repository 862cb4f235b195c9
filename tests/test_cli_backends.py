"""One CLI, two backends: each command prints the same against a local DuckDB file and through ``spanprism serve``.

The world (simulate → ingest → attribute, built once per session by ``test_api_read.build_world``) is copied twice.
A ``spanprism serve`` subprocess holds one copy, so the CLI finds that file locked and goes through the server on
the configured port (``RemoteBackend``); the other copy the CLI opens itself (``LocalBackend``). Every step runs on
both and compares exit codes and stdout. Only what one side cannot know is masked first: run ids and times, the
run's trigger (``cli`` here, ``api`` on the server), a new key's id and secret, feedback ids and times.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_KEY
from support.receiver import Receiver
from support.uploads import BIN
from support.world import build_world

from spanprism.api.cli import main
from spanprism.api.cli.backend import Backend
from spanprism.api.cli.local import LocalBackend
from spanprism.api.cli.remote import RemoteBackend
from spanprism.api.server import free_port, wait_healthy

_RUN_ONLY = ("id", "trigger", "queued_at", "started_at", "finished_at")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hooks = Receiver().start()
    yield hooks
    hooks.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[dict[str, Any]]:
    """Two identical files: ``local`` (free) and ``served`` (held by ``spanprism serve`` on ``port``)."""
    world = build_world(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("backends")
    local, served = root / "local.duckdb", root / "served.duckdb"
    shutil.copy(world, local)
    shutil.copy(world, served)
    config = root / "spanprism.toml"  # one webhook both sides load; the rule is off so no pass enqueues alerts
    config.write_text(f'[[alerts.destinations]]\nname = "hook"\nkind = "webhook"\nurl = "{receiver.url}/parity"\n'
                      'hmac_secret = "parity"\n\n'
                      '[[alerts.rules]]\nname = "all"\ndestination = "hook"\nenabled = false\n')  # fmt: skip
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPANPRISM_")}
    env |= {"SPANPRISM_ADMIN_KEY": ADMIN_KEY, "SPANPRISM_INGEST_WORKERS": "1", "SPANPRISM_CONFIG": str(config),
            "SPANPRISM_SCHEDULER_ENABLED": "false"}  # fmt: skip
    log = (root / "serve.log").open("wb")
    proc = subprocess.Popen([str(BIN), "--db", str(served), "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert wait_healthy(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None), (
            root / "serve.log"
        ).read_text()
        yield {"local": str(local), "served": str(served), "port": port, "config": config, "world": world}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
def both(pair: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``both(*args)`` runs ``spanprism --db FILE *args`` on each file: ``[(code, stdout, stderr)] * 2``."""
    for var in [v for v in os.environ if v.startswith("SPANPRISM_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("SPANPRISM_API_KEY", ADMIN_KEY)
    monkeypatch.setenv("SPANPRISM_PORT", str(pair["port"]))
    monkeypatch.setenv("SPANPRISM_CONFIG", str(pair["config"]))

    def run(*args: str) -> list[tuple[int, str, str]]:
        results = []
        for db in (pair["local"], pair["served"]):
            capsys.readouterr()
            code = main(["--db", db, *args])
            captured = capsys.readouterr()
            results.append((code, captured.out, captured.err))
        return results

    return run


def same(results: list[tuple[int, str, str]], mask=lambda out: out) -> str:
    """Assert both sides exited alike and printed the same (after ``mask``); the common stdout."""
    (code_l, out_l, _), (code_r, out_r, _) = results
    assert (code_l, mask(out_l)) == (code_r, mask(out_r))
    return out_l


def _run(record: dict[str, Any]) -> dict[str, Any]:
    """A run record without what differs between two runs of the same pass (ids, times, trigger, stage seconds)."""
    kept = {k: v for k, v in record.items() if k not in _RUN_ONLY}
    if "counts" in kept:
        kept["counts"] = {k: v for k, v in kept["counts"].items() if k != "seconds"}
    return kept


def _run_masked(out: str) -> dict[str, Any]:
    """``attribute --json``/``jobs run --json``: the counts and the run, masked."""
    body = json.loads(out)
    body.pop("seconds", None)
    body["run"] = _run(body["run"])
    return body


def _feedback_masked(out: str) -> dict[str, Any]:
    record = json.loads(out)
    record["feedback"] = [{k: v for k, v in f.items() if k not in ("id", "created_at")} for f in record["feedback"]]
    return record


def test_both_backends_implement_the_whole_contract():
    for cls in (LocalBackend, RemoteBackend):
        assert not inspect.isabstract(cls), f"{cls.__name__} misses {sorted(cls.__abstractmethods__)}"
        for name, method in inspect.getmembers(Backend, inspect.isfunction):
            if not name.startswith("_"):
                assert inspect.signature(getattr(cls, name)) == inspect.signature(method), f"{cls.__name__}.{name}"


def test_ingest_and_passes_print_the_same(both, pair, tmp_path: Path):
    export = min((pair["world"].parent / "sim").glob("spans-*.jsonl.gz"), key=lambda p: p.stat().st_size)
    ingested = both("ingest", "--json", str(export))  # the world's own spans: every call is a duplicate
    assert json.loads(same(ingested))["duplicates"] > 1000
    assert "held by a running server" in " ".join(ingested[1][2].split())  # the served file went through it
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"resourceSpans": [\n')
    assert "quarantined records keep their raw bytes" in same(both("ingest", str(broken)))
    assert both("ingest", "--strict", str(broken))[1][0] == 1
    assert _run_masked(same(both("attribute", "--json"), _run_masked))["run"]["status"] == "succeeded"
    same(both("jobs", "run", "incremental", "--json"), _run_masked)
    listed = both("jobs", "--json", "--limit", "3")
    same(listed, lambda out: [_run(r) for r in json.loads(out)["data"]])
    assert [r["trigger"] for r in json.loads(listed[1][1])["data"][:2]] == ["api", "api"]


def test_regressions_explain_and_label_print_the_same(both):
    records = json.loads(same(both("regressions", "--json")))
    assert len(records) >= 2
    assert "regressions" in same(both("regressions"))
    same(both("regressions", "--json", "--status", "resolved", "--since", "2026-10-02"))
    first = records[0]["id"]
    assert first in same(both("explain", first[:8]))
    assert json.loads(same(both("explain", first[:8], "--json")))["feedback"] == []
    missing = both("explain", "zzzz")
    assert same(missing) == "" and missing[0][0] == 1
    labelled = both("label", first[:8], "cache_eviction", "--reason", "prompt_changed", "--note", "pm-1")
    assert same(labelled) == f"recorded cache_eviction/prompt_changed for {first}\n"
    record = _feedback_masked(same(both("explain", first, "--json"), _feedback_masked))
    assert record["feedback"] == [{"label": "cache_eviction", "reason": "prompt_changed", "note": "pm-1"}]


def test_keys_print_the_same(both, pair, capsys):
    secret = re.compile(r"\b[0-9a-f]{8}\b|spk_\S+")  # a key's id, and the key itself

    def masked(out: str) -> str:
        return secret.sub("K", out)

    assert "(ingest, read); store it now" in same(
        both("keys", "create", "--scope", "read,ingest", "--name", "p"), masked
    )
    listed = both("keys", "list")
    assert "p  ingest,read  active  created" in same(listed, masked)
    for db, (_, out, _) in zip((pair["local"], pair["served"]), listed, strict=True):  # each side revokes its own
        key_id = secret.search(out).group()
        assert main(["--db", db, "keys", "revoke", "--id", key_id]) == 0
        assert capsys.readouterr().out == f"revoked {key_id}\n"
    assert "revoked  created" in same(both("keys", "list"), masked)
    assert same(both("keys", "revoke", "--id", "00000000")) == "error: no active key 00000000\n"


def test_alerts_print_the_same(both, receiver: Receiver):
    listed = same(both("alerts", "list"))
    assert "hook  webhook  origin=config" in listed and "rules (1):" in listed and "disabled" in listed
    same(both("alerts", "list", "--json"), _config_masked)
    assert same(both("alerts", "outbox")) == "0 deliveries\n"
    assert same(both("alerts", "test", "hook")) == "sent\n"
    assert same(both("alerts", "test", "nope")) == "error: no destination nope\n"
    assert [r["path"] for r in receiver.ok()] == ["/parity", "/parity"]


def _config_masked(out: str) -> dict[str, Any]:
    """Config rows are re-created whenever a side applies the file (the CLI: every ``alerts`` command)."""
    body = json.loads(out)
    return {part: [{k: v for k, v in row.items() if k not in ("created_at", "updated_at")} for row in rows]
            for part, rows in body.items()}  # fmt: skip
