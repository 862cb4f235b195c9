"""The ingest pipeline and the `spanprism ingest` CLI: inputs, parallel workers, batches, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.stored_rows import _rows

from spanprism.api.cli import main
from spanprism.api.storage.connect import open_db
from spanprism.attribution.simulator.otlp.writer import write_export
from spanprism.ingest import pipeline
from spanprism.ingest.pipeline import expand_sources, ingest_paths


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    (folder / "nested").mkdir(parents=True)
    write_export(folder / "a.jsonl", _rows(40), extra_non_llm=0.25, seed=1, spans_per_line=5)
    write_export(folder / "nested" / "b.jsonl.gz", _rows(30, offset=1000), seed=2, spans_per_line=5)
    (folder / ".hidden.jsonl").write_bytes(b"not even json\n")
    return folder


def _count(con) -> int:
    return con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]


def test_expand_sources_folders_globs_and_missing(exports: Path) -> None:
    found, errors = expand_sources([exports, str(exports / "*.jsonl"), "-", exports / "missing.jsonl", "/no/*.zzz"])
    names = [Path(p).name for p in found if p != "-"]
    assert names == ["a.jsonl", "b.jsonl.gz", "a.jsonl"]  # hidden file skipped, glob matched, folder recursed
    assert "-" in found
    assert len(errors) == 2 and "no such file" in errors[0] and "no file matches" in errors[1]


def test_folder_ingest_counts_and_idempotence(exports: Path, tmp_path: Path) -> None:
    con = open_db(tmp_path / "p.duckdb")
    first = ingest_paths(con, [exports])
    assert (first.calls_stored, first.quarantined, first.errors) == (70, 0, [])
    assert first.non_llm_skipped == 10
    assert sum(first.conventions.values()) == 70
    again = ingest_paths(con, [exports])
    assert (again.calls_stored, again.duplicates) == (0, 70)
    assert _count(con) == 70


def test_parallel_workers_store_the_same_rows(exports: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "PARALLEL_MIN_BYTES", 0)
    query = "SELECT * EXCLUDE (ingest_batch) FROM llm_calls ORDER BY trace_id, span_id"
    serial = open_db(tmp_path / "s.duckdb")
    ingest_paths(serial, [exports], workers=1, chunk_bytes=4096, batch_rows=16)
    parallel = open_db(tmp_path / "w.duckdb")
    summary = ingest_paths(parallel, [exports], workers=2, chunk_bytes=4096, batch_rows=16)
    assert summary.calls_stored == 70
    assert len(summary.batches) >= 4  # small batch_rows → several atomic batches
    assert serial.execute(query).fetchall() == parallel.execute(query).fetchall()


def test_bad_lines_are_quarantined_and_good_ones_land(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    write_export(path, _rows(12), seed=3, spans_per_line=4)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"resourceSpans": [\n' + b"\xff\xfe garbage\n" + b"".join(lines[1:]))
    con = open_db(tmp_path / "q.duckdb")
    summary = ingest_paths(con, [path])
    assert (summary.calls_stored, summary.quarantined) == (12, 2)
    reasons = con.execute("SELECT location, reason FROM quarantine ORDER BY location").fetchall()
    assert [loc for loc, _ in reasons] == ["line 2", "line 3"]
    assert all(reason for _, reason in reasons)


def test_cli_ingest_summary_strict_and_usage(exports: Path, tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "cli.duckdb")
    assert main(["--db", db, "ingest", "--json", str(exports)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["calls_stored"] == 70 and summary["errors"] == []
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"{not json}\n")
    assert main(["--db", db, "ingest", str(bad)]) == 0
    assert main(["--db", db, "ingest", "--strict", str(bad)]) == 1  # quarantined again → strict fails
    assert main(["--db", db, "ingest", str(tmp_path / "missing.jsonl")]) == 1
    with pytest.raises(SystemExit) as usage:
        main(["--db", db, "ingest"])
    assert usage.value.code == 2


def test_cli_ingest_from_stdin(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    write_export(path, _rows(9), seed=4)
    db = tmp_path / "stdin.duckdb"
    done = subprocess.run(
        [sys.executable, "-m", "spanprism.api.cli", "--db", str(db), "ingest", "--json", "-"],
        input=path.read_bytes(), capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["calls_stored"] == 9
    con = open_db(db)
    assert con.execute("SELECT DISTINCT source FROM ingest_batches").fetchall() == [("stdin",)]
