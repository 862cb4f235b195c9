"""Seeded, bounded fuzzing of every input path (issue 15): files of every format and encoding, OTLP bodies.

Mutations (truncation, flipped bytes, inserted or deleted runs, duplicated slices, trailing garbage, zeroed runs) of
valid inputs. For files, each damaged file is ingested between two good files in one call; for OTLP, every body
goes to a live server. Asserted: no exception (no traceback), no 5xx, the good files' calls all stored, every
rejection counted (the summary's ``quarantined`` equals the rows added to the quarantine table; a 400 keeps its
body; a 200 counts in ``partial_success`` exactly the spans it quarantined).
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from conftest import Live
from google.protobuf.json_format import MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from support.otlp_spans import genai_spans

from spanprism.api.storage.connect import open_db
from spanprism.ingest.pipeline import ingest_paths

SEED = 15
FILE_CASES = 24  # per base file (10 bases: 240 files)
BODY_CASES = 30  # per encoding (6 encodings × 2 media types would be more; see BODIES: 180 bodies)


def _requests(seed: int, n: int = 3) -> list:
    return [encode_spans(genai_spans(2, seed=seed * 100 + i, model=f"fuzz-{seed}")) for i in range(n)]


def _prefixed(records: list[bytes]) -> bytes:
    return b"".join(len(r).to_bytes(4, "big") + r for r in records)


def _bases() -> dict[str, bytes]:
    """One valid file per format × compression the file path reads."""
    requests = _requests(1)
    jsonl = b"".join(MessageToJson(r, indent=None).encode() + b"\n" for r in requests)
    proto = [r.SerializeToString() for r in requests]
    packer = zstandard.ZstdCompressor()
    plain = {
        "x.jsonl": jsonl,
        "x.json": MessageToJson(requests[0]).encode(),
        "x.pb": proto[0],
        "x.lp": _prefixed(proto),
        "x.lpz": _prefixed([packer.compress(p) for p in proto]),
    }
    packed = {f"{name}.gz": gzip.compress(data, mtime=0) for name, data in plain.items() if name != "x.lpz"}
    packed |= {f"{name}.zst": packer.compress(data) for name, data in plain.items() if name in ("x.jsonl", "x.lp")}
    return plain | packed


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One random, bounded damage."""
    at = rng.randrange(len(data))
    span = rng.randint(1, 64)
    kind = rng.randrange(7)
    if kind == 0:
        return data[:at]  # cut short
    if kind == 1:
        flipped = bytearray(data)
        for i in rng.sample(range(len(data)), min(len(data), rng.randint(1, 8))):
            flipped[i] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if kind == 2:
        return data[:at] + rng.randbytes(span) + data[at:]
    if kind == 3:
        return data[:at] + data[at + span :]
    if kind == 4:
        return data[:at] + data[max(0, at - span) : at] * rng.randint(2, 5) + data[at:]
    if kind == 5:
        return data + rng.randbytes(span)
    return data[:at] + bytes(span) + data[at + span :]


def _count(con, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize("name", sorted(_bases()))
def test_damaged_files_never_crash_and_count_every_rejection(tmp_path: Path, name: str) -> None:
    rng = random.Random(f"{SEED}-{name}")
    base = _bases()[name]
    good_before, good_after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    for path, seed in ((good_before, 2), (good_after, 3)):
        path.write_bytes(b"".join(MessageToJson(r, indent=None).encode() + b"\n" for r in _requests(seed)))
    con = open_db(tmp_path / "fuzz.duckdb")
    for case in range(FILE_CASES):
        damaged = tmp_path / f"{case}-{name}"
        damaged.write_bytes(_mutate(base, rng))
        quarantined_before = _count(con, "quarantine")
        summary = ingest_paths(con, [good_before, damaged, good_after])  # must not raise
        assert summary.errors == [], (case, summary.errors)
        assert _count(con, "quarantine") - quarantined_before == summary.quarantined
        good = con.execute("SELECT count(*) FROM llm_calls WHERE request_model IN ('fuzz-2', 'fuzz-3')").fetchone()
        assert good[0] == 12  # 2 files × 3 requests × 2 calls, whatever sat between them


def _bodies() -> list[tuple[str, str | None, Callable[[bytes], bytes]]]:
    def deflate(data: bytes) -> bytes:
        import zlib

        return zlib.compress(data)

    return [
        ("application/x-protobuf", None, lambda b: b),
        ("application/json", None, lambda b: b),
        ("application/x-protobuf", "gzip", lambda b: gzip.compress(b, mtime=0)),
        ("application/json", "deflate", deflate),
        ("application/x-protobuf", "zstd", zstandard.ZstdCompressor().compress),
        ("application/json", "zstd", zstandard.ZstdCompressor().compress),
    ]


def _quarantine_rows(live: Live) -> int:
    with live.app.state.db.read() as cur:  # type: ignore[attr-defined]
        return cur.execute("SELECT count(*) FROM quarantine WHERE source = 'otlp/http'").fetchone()[0]


@pytest.mark.parametrize(("media", "encoding", "encode"), _bodies(), ids=lambda v: str(v)[:20])
def test_damaged_otlp_bodies_never_5xx_and_count_every_rejection(server: Live, media, encoding, encode) -> None:
    rng = random.Random(f"{SEED}-{media}-{encoding}")
    request = _requests(4)[0]
    plain = MessageToJson(request, indent=None).encode() if media == "application/json" else request.SerializeToString()
    body = encode(plain)
    headers = {"content-type": media} | ({"content-encoding": encoding} if encoding else {})
    answered: set[int] = set()
    for _ in range(BODY_CASES):
        before = _quarantine_rows(server)
        reply = server.client.post("/v1/traces", content=_mutate(body, rng), headers=headers)
        answered.add(reply.status_code)
        added = _quarantine_rows(server) - before
        assert reply.status_code in (200, 400), reply.text
        if reply.status_code == 400:
            assert added == 1  # the undecodable body itself, kept for inspection and re-drive
            continue
        answer = ExportTraceServiceResponse()
        if media == "application/json":
            rejected = int(reply.json().get("partialSuccess", {}).get("rejectedSpans", 0))
        else:
            answer.ParseFromString(reply.content)
            rejected = answer.partial_success.rejected_spans
        assert rejected == added
    assert 400 in answered  # the mutations do reach the refusal path
