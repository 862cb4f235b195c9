"""Hostile and damaged HTTP inputs (issue 15): truncated zstd, decompression bombs, LIKE wildcards, a stuck writer.

A truncated zstd OTLP body is refused (400, the body kept in quarantine) instead of a silent 200; an upload that
inflates past the cap answers 413 within seconds with nothing stored; ``reason=%`` matches only a literal ``%``;
``/readyz`` says not ready while queued spans wait on a writer that does not commit.
"""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path

import httpx
import zstandard
from conftest import Live
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from support.otlp_spans import genai_spans, stored

PROTOBUF = {"content-type": "application/x-protobuf"}


def _quarantined(live: Live, source: str) -> list[tuple[str, str]]:
    with live.app.state.db.read() as cur:  # type: ignore[attr-defined]
        return cur.execute("SELECT location, reason FROM quarantine WHERE source = ?", [source]).fetchall()


def test_truncated_zstd_otlp_body_is_refused_and_kept(server: Live) -> None:
    body = encode_spans(genai_spans(20, seed=7, model="m-zstd")).SerializeToString()
    packed = zstandard.ZstdCompressor().compress(body)
    for cut in (len(packed) // 2, len(packed) - 3):
        reply = server.client.post("/v1/traces", content=packed[:cut], headers={**PROTOBUF, "content-encoding": "zstd"})
        assert reply.status_code == 400, reply.text
    kept = _quarantined(server, "otlp/http")
    assert len(kept) == 2 and all("truncated" in reason for _, reason in kept)
    assert stored(server, "m-zstd") == {}
    whole = server.client.post("/v1/traces", content=packed, headers={**PROTOBUF, "content-encoding": "zstd"})
    assert whole.status_code == 200 and len(stored(server, "m-zstd")) == 20


def test_upload_bomb_is_refused_quickly(make_server, tmp_path: Path) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join([*(packer.compress(bytes(1 << 20)) for _ in range(100)), packer.flush()])  # 100 MiB of zeros
    assert len(bomb) < 200_000
    with make_server(max_decompressed_bytes=32 << 20) as live:  # over the inflated cap: refused before storing
        started = time.monotonic()
        reply = live.client.post("/api/v1/ingest", params={"filename": "bomb.gz"}, content=bomb)
        assert reply.status_code == 413 and "max_decompressed_bytes" in reply.text
        assert time.monotonic() - started < 20
        assert live.client.get("/api/v1/ingest/batches").json()["count"] == 0
        # The OTLP path refuses the same bytes the same way (there max_body_bytes bounds the inflated body too).
        otlp = live.client.post("/v1/traces", content=bomb, headers={**PROTOBUF, "content-encoding": "gzip"})
        assert otlp.status_code == 413
    with make_server(max_records_per_input=5_000_000) as live:  # under it: the records cap refuses it, counted
        started = time.monotonic()
        reply = live.client.post("/api/v1/ingest", params={"filename": "bomb.gz"}, content=bomb)
        assert reply.status_code == 413 and "max_records_per_input" in reply.text
        assert time.monotonic() - started < 30
        kept = _quarantined(live, "upload:bomb.gz")
        assert len(kept) == 1 and "max_records_per_input" in kept[0][1]


def test_quarantine_reason_filter_matches_wildcards_literally(server: Live) -> None:
    with server.app.state.db.write() as cur:  # type: ignore[attr-defined]
        for i, reason in enumerate(("100% bad", "under_score", "plain")):
            cur.execute("INSERT INTO quarantine VALUES (?, 'b', 's', 'line 1', ?, ''::BLOB, now(), NULL)",
                        [f"q{i}", reason])  # fmt: skip

    def count(text: str) -> int:
        return server.client.get("/api/v1/quarantine", params={"reason": text}).json()["count"]

    assert (count("%"), count("_"), count("0% B"), count("r_s"), count("a"), count("\\")) == (1, 1, 1, 1, 2, 0)


def test_readyz_reports_a_stuck_writer(make_server) -> None:
    with make_server(ready_stall_s=0.5) as live:
        body = encode_spans(genai_spans(2, seed=8, model="m-stuck")).SerializeToString()
        lock = live.app.state.db.write_lock
        lock.acquire()  # a writer that never finishes, as far as the ingest writer thread can tell
        try:
            sender = threading.Thread(target=httpx.post, args=(f"{live.url}/v1/traces",),
                                      kwargs={"content": body, "headers": {**PROTOBUF, **live.client.headers},
                                              "timeout": 60})  # fmt: skip
            sender.start()
            deadline = time.monotonic() + 20
            while live.client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            stuck = live.client.get("/readyz")
            assert stuck.status_code == 503 and stuck.json()["status"] == "stalled"
        finally:
            lock.release()
        sender.join(30)
        assert len(stored(live, "m-stuck")) == 2
        assert live.client.get("/readyz").status_code == 200
