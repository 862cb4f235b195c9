"""Damaged and hostile inputs (issue 15): nothing lost before the damage, one record naming it, never a traceback.

Every damaged compressed stream (cut short, bad CRC, trailing garbage, corrupt deflate data, a zstd frame cut short)
keeps the records before the damage, ends with one quarantined record naming the byte offset, and lets the other
files of the same command land. Caps on inflated bytes and records refuse a decompression bomb within seconds;
text and timestamp bounds keep a 32 MiB ``service.name`` or a year-2554 start out of the series.
"""

from __future__ import annotations

import gzip
import time
import zlib
from pathlib import Path

import orjson
import pytest
import zstandard
from support.stored_rows import _rows

from spanprism.api.cli import main
from spanprism.api.storage.connect import open_db
from spanprism.attribution.simulator.otlp.writer import write_export
from spanprism.ingest.decode import open_input
from spanprism.ingest.inflate import Inflater
from spanprism.ingest.limits import TRUNCATED_MARK, Limits
from spanprism.ingest.pipeline import ingest_paths

LINES = 40  # requests (lines) of the file that gets damaged, 5 spans each


def _lines(tmp_path: Path) -> list[bytes]:
    write_export(tmp_path / "plain.jsonl", _rows(LINES * 5, offset=5000), seed=3, spans_per_line=5)
    return (tmp_path / "plain.jsonl").read_bytes().splitlines(keepends=True)


def _zstd_blocks(lines: list[bytes]) -> bytes:
    """One zstd frame flushed block by block every 5 lines, as a Collector writing as it goes does."""
    sink = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    parts = []
    for i, line in enumerate(lines, 1):
        parts.append(sink.compress(line))
        if i % 5 == 0:
            parts.append(sink.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    return b"".join([*parts, sink.flush()])


def _damaged(lines: list[bytes]) -> dict[str, tuple[bytes, str]]:
    """name → (bytes, text the damage record's reason must contain)."""
    body = b"".join(lines)
    gz, zs = gzip.compress(body, mtime=0), _zstd_blocks(lines)
    crc_at = len(gz) - 8
    return {
        "cut.jsonl.gz": (gz[: len(gz) * 2 // 3], "truncated"),
        "crc.jsonl.gz": (gz[:crc_at] + bytes([gz[crc_at] ^ 1]) + gz[crc_at + 1 :], "incorrect data check"),
        "length.jsonl.gz": (gz[:-4] + (len(body) + 1).to_bytes(4, "little"), "incorrect length check"),
        "trailing.jsonl.gz": (gz + b"not a gzip member", "trailing bytes"),
        "corrupt.jsonl.gz": (gz[:900] + bytes(b ^ 0x5A for b in gz[900:940]) + gz[940:], "corrupt data"),
        "cut.jsonl.zst": (zs[: len(zs) * 2 // 3], "truncated"),
        "cut-header.jsonl.zst": (zs[:7], "truncated"),
    }


@pytest.mark.parametrize("name", list(_damaged([b"{}\n"])))
def test_damaged_file_keeps_what_came_before_and_the_other_files_land(tmp_path: Path, name: str) -> None:
    lines = _lines(tmp_path)
    data, why = _damaged(lines)[name]
    write_export(tmp_path / "a.jsonl", _rows(40), seed=1, spans_per_line=5)
    write_export(tmp_path / "c.jsonl", _rows(30, offset=1000), seed=2, spans_per_line=5)
    (tmp_path / name).write_bytes(data)
    con = open_db(tmp_path / "d.duckdb")
    summary = ingest_paths(con, [tmp_path / "a.jsonl", tmp_path / name, tmp_path / "c.jsonl"])
    assert summary.errors == []
    rows = con.execute("SELECT location, reason FROM quarantine WHERE source = ?", [str(tmp_path / name)]).fetchall()
    damage = [(loc, reason) for loc, reason in rows if loc.startswith("byte ")]
    assert len(damage) == 1 and why in damage[0][1], rows
    offset = int(damage[0][0].split()[1])
    assert 0 <= offset <= len(data)
    stored_from_damaged = summary.calls_stored - 70
    # What inflated before the damage is stored: all but the line cut by it (and, for gzip, the 32 KiB window).
    inflater = Inflater(open(tmp_path / name, "rb"), "zstd" if name.endswith("zst") else "gzip")  # noqa: SIM115
    good = inflater.read().count(b"\n")
    inflater.close()
    assert stored_from_damaged == good * 5
    assert con.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == summary.calls_stored


def test_corrupt_gzip_names_the_offset_of_the_damage(tmp_path: Path) -> None:
    data, _ = _damaged(_lines(tmp_path))["corrupt.jsonl.gz"]
    stream = open_input(_write(tmp_path / "x.gz", data))
    out = stream.read()
    damage = stream.raw.damage  # type: ignore[attr-defined]
    assert damage and "corrupt data" in damage
    assert 880 <= stream.raw.consumed <= 940  # type: ignore[attr-defined]
    expected = b"".join(_lines(tmp_path))
    same = next(i for i, (got, want) in enumerate(zip(out, expected, strict=False)) if got != want)
    assert same > 1500  # what inflated before the damaged bytes is kept (deflate notices corruption a bit later)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_zero_padding_and_concatenated_members_are_not_damage(tmp_path: Path) -> None:
    lines = _lines(tmp_path)
    half = len(lines) // 2
    gz = gzip.compress(b"".join(lines[:half]), mtime=0) + gzip.compress(b"".join(lines[half:]), mtime=0)
    zs = _zstd_blocks(lines[:half]) + _zstd_blocks(lines[half:])
    for name, data in (("p.jsonl.gz", gz + bytes(512)), ("m.jsonl.zst", zs)):
        con = open_db(tmp_path / f"{name}.duckdb")
        summary = ingest_paths(con, [_write(tmp_path / name, data)])
        assert (summary.calls_stored, summary.quarantined, summary.errors) == (LINES * 5, 0, [])


def _zeros_gzip(mib: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([*(packer.compress(bytes(1 << 20)) for _ in range(mib)), packer.flush()])


def test_decompression_bomb_is_refused_within_seconds(tmp_path: Path) -> None:
    bomb = _write(tmp_path / "bomb.gz", _zeros_gzip(64))  # 64 MiB of zeros: 16 M empty length-prefixed records
    good = tmp_path / "good.jsonl"
    write_export(good, _rows(10), seed=1)
    for limits, cap in ((Limits(max_records=1_000_000), "max_records_per_input"),
                        (Limits(max_decompressed_bytes=8 << 20), "max_decompressed_bytes")):  # fmt: skip
        con = open_db(tmp_path / f"{cap}.duckdb")
        started = time.monotonic()
        summary = ingest_paths(con, [bomb, good], limits=limits)
        assert time.monotonic() - started < 15
        assert len(summary.errors) == 1 and cap in summary.errors[0]
        assert summary.calls_stored == 10 and summary.quarantined == 1


def test_cli_reports_a_refused_input_and_stores_the_rest(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SPANPRISM_DB", str(tmp_path / "cli.duckdb"))
    monkeypatch.setenv("SPANPRISM_MAX_DECOMPRESSED_BYTES", str(4 << 20))
    good, cut = tmp_path / "good.jsonl", tmp_path / "cut.jsonl.gz"
    write_export(good, _rows(10), seed=1)
    cut.write_bytes(_damaged(_lines(tmp_path))["cut.jsonl.gz"][0])
    assert main(["ingest", "--json", str(good), str(cut)]) == 0  # damage is quarantined, not an error
    bomb = _write(tmp_path / "bomb.gz", _zeros_gzip(8))
    assert main(["ingest", "--json", str(bomb), str(good)]) == 1  # refused: an error, the exit code says so
    err = capsys.readouterr().err
    assert "max_decompressed_bytes" in err and "Traceback" not in err


def _line_with(tmp_path: Path, **change: object) -> Path:
    """One exported span (one line) with its service name or start time replaced."""
    write_export(tmp_path / "one.jsonl", _rows(1), seed=1)
    doc = orjson.loads((tmp_path / "one.jsonl").read_bytes().splitlines()[0])
    resource_spans = doc["resourceSpans"][0]
    span = resource_spans["scopeSpans"][0]["spans"][0]
    if "service" in change:
        resource_spans["resource"]["attributes"][0]["value"]["stringValue"] = change["service"]
    if "start" in change:
        span["startTimeUnixNano"], span["endTimeUnixNano"] = str(change["start"]), str(change["start"] + 900_000_000)
    return _write(tmp_path / "changed.jsonl", orjson.dumps({"resourceSpans": [resource_spans]}) + b"\n")


def test_oversize_text_is_truncated_or_quarantined_by_setting(tmp_path: Path) -> None:
    path = _line_with(tmp_path, service="s" * (1 << 20))
    con = open_db(tmp_path / "t.duckdb")
    assert ingest_paths(con, [path]).calls_stored == 1
    (service,) = con.execute("SELECT service FROM llm_calls").fetchone()
    assert len(service) == 1024 and service.endswith(TRUNCATED_MARK)
    con = open_db(tmp_path / "q.duckdb")
    summary = ingest_paths(con, [path], limits=Limits(oversize_strings="quarantine", max_string_chars=100))
    assert (summary.calls_stored, summary.quarantined) == (0, 1)
    (reason,) = con.execute("SELECT reason FROM quarantine").fetchone()
    assert reason == "service of 1048576 characters exceeds max_string_chars (100)"


@pytest.mark.parametrize(("start", "reason"), [((1 << 64) - 10**9, "outside the accepted window"),
                                               (10**30, "out of the uint64 range"),
                                               (1, "outside the accepted window")])  # fmt: skip
def test_implausible_start_times_are_quarantined(tmp_path: Path, start: int, reason: str) -> None:
    con = open_db(tmp_path / "ts.duckdb")
    summary = ingest_paths(con, [_line_with(tmp_path, start=start)])
    assert (summary.calls_stored, summary.quarantined, summary.errors) == (0, 1, [])
    assert reason in con.execute("SELECT reason FROM quarantine").fetchone()[0]
