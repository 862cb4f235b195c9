"""Worker processes die with their parent (issue 15): SIGKILL ``ingest`` or ``serve`` and nothing is left running.

Each test starts the real command in its own session, waits until its decode workers (and multiprocessing's
resource tracker) exist, kills the parent with SIGKILL, and expects every one of those processes gone within
seconds. A zombie (exited, waiting for its new parent to reap it) counts as gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_KEY
from support.stored_rows import _rows

from spanprism.api.server import free_port, wait_healthy
from spanprism.attribution.simulator.otlp.writer import write_export

BIN = Path(sys.executable).parent / "spanprism"
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a live process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), fields[0]


def _children(parent: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] == parent:
            found.add(int(entry.name))
    return found


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (stat := _stat(pid)) and stat[1] != "Z"}


def _kill_and_expect_no_survivor(proc: subprocess.Popen[bytes], workers: int) -> None:
    # Generous: starting the CLI (imports) on a loaded 2-core machine alone has taken 40 s.
    assert _wait_for(lambda: len(_children(proc.pid)) >= workers + 1, 180), "workers and tracker never started"
    spawned = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _wait_for(lambda: not _alive(spawned), 5), f"survivors: {_alive(spawned)}"


def test_ingest_workers_die_with_a_killed_ingest(tmp_path: Path) -> None:
    write_export(tmp_path / "part.jsonl", _rows(40), seed=1)
    env = {**os.environ, "SPANPRISM_DB": str(tmp_path / "k.duckdb"), "SPANPRISM_CHUNK_BYTES": "65536"}
    proc = subprocess.Popen([str(BIN), "ingest", "-", "--workers", "2"], stdin=subprocess.PIPE, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdin is not None
        part = (tmp_path / "part.jsonl").read_bytes()
        proc.stdin.write(part * (1 + (3 << 19) // len(part)))  # > 1 MiB: stdin is read in 1 MiB blocks
        proc.stdin.flush()  # and stays open: ingest waits for more, its workers alive
        _kill_and_expect_no_survivor(proc, workers=2)
    finally:
        proc.kill()


def test_serve_workers_die_with_a_killed_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SPANPRISM_ADMIN_KEY": ADMIN_KEY, "SPANPRISM_INGEST_WORKERS": "2"}
    proc = subprocess.Popen([str(BIN), "--db", str(tmp_path / "s.duckdb"), "serve", "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_healthy(url, alive=lambda: proc.poll() is None)
        write_export(tmp_path / "body.jsonl", _rows(1), seed=1)
        body = (tmp_path / "body.jsonl").read_bytes().splitlines()[0]
        # Padded past PROCESS_MIN_BYTES, so it is decoded in a worker process (which starts the pool).
        headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}"}
        reply = httpx.post(f"{url}/v1/traces", content=body + b" " * (64 << 10), headers=headers, timeout=120)
        assert reply.status_code == 200, reply.text
        _kill_and_expect_no_survivor(proc, workers=2)
    finally:
        proc.kill()
