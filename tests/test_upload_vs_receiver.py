"""A long upload cannot stall the OTLP receiver (issue 15).

A real server; one client uploads a large export through ``POST /api/v1/ingest`` (written in many small batches,
``ingest_batch_rows``); meanwhile another client keeps posting OTLP protobuf bodies to ``/v1/traces``. Every post
must be answered 200 and be stored (readable from the server's own database handle) while the upload is still
running, and the upload must keep committing batches after the posts began: the two interleave on the write lock.
The bounds are generous (no timing micro-benchmark): what fails is a receiver that waits for the whole upload.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from conftest import ADMIN_KEY
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from support.otlp_spans import genai_spans, stored
from support.uploads import large_export, upload

UPLOAD_MODEL = "m-long-upload"


def _upload_batches(live) -> list[datetime]:
    """When each committed batch of the upload finished (the server's own clock, UTC)."""
    with live.app.state.db.read() as cur:
        rows = cur.execute("SELECT finished_at FROM ingest_batches WHERE source = 'upload:big.jsonl.gz'"
                           " ORDER BY finished_at").fetchall()  # fmt: skip
    return [row[0] for row in rows]


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_otlp_posts_are_stored_while_a_long_upload_runs(make_server, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl.gz"
    calls = large_export(path, lines=200, spans_per_line=100, model=UPLOAD_MODEL)
    with make_server(ingest_batch_rows=1_000, chunk_bytes=256 << 10, ingest_workers=1) as live:
        done: dict[str, object] = {}

        def run_upload() -> None:
            with httpx.Client(base_url=live.url, headers={"authorization": f"Bearer {ADMIN_KEY}"},
                              timeout=600) as client:  # fmt: skip
                done["reply"] = upload(client, path, "big.jsonl.gz")
            done["at"] = datetime.now(UTC)

        uploader = threading.Thread(target=run_upload)
        uploader.start()
        # The upload is under way once its first batch is committed.
        assert _wait_for(lambda: _upload_batches(live) or "reply" in done, 300), "the upload stored nothing"
        posts: list[tuple[datetime, bool, bool]] = []  # (acknowledged at, stored when acknowledged, upload running)
        headers = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/x-protobuf"}
        with httpx.Client(base_url=live.url, headers=headers, timeout=60) as client:
            while "reply" not in done and len(posts) < 200:
                model = f"m-live-{len(posts)}"
                body = encode_spans(genai_spans(3, seed=1_000 + len(posts), model=model)).SerializeToString()
                reply = client.post("/v1/traces", content=body)
                assert reply.status_code == 200, reply.text
                acked, running = datetime.now(UTC), "reply" not in done
                posts.append((acked, len(stored(live, model)) == 3, running))
                time.sleep(0.02)
        uploader.join(600)
        reply = done["reply"]
        assert isinstance(reply, httpx.Response) and reply.status_code == 200, reply
        assert reply.json()["calls_stored"] == calls
        batches = _upload_batches(live)
    assert len(batches) >= 10  # many batches, each a short hold of the write lock
    during = [p for p in posts if p[2]]
    assert len(during) >= 3, f"only {len(during)} OTLP posts were answered while the upload ran"
    assert all(p[1] for p in posts), "an acknowledged OTLP post was not stored"
    # Interleaved, not queued behind the upload: the upload still committed batches after the first post was stored.
    first_ack = during[0][0]
    assert sum(b > first_ack for b in batches) >= 3
    assert all(ack < done["at"] for ack, _, _ in during)
