"""Upload-route test helpers: the CLI binary, export files, uploads through the API, quarantine fixtures."""

from __future__ import annotations

import gzip
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from conftest import Live
from google.protobuf.json_format import MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from support.otlp_spans import genai_spans

BIN = Path(sys.executable).parent / "spanprism"


def export_file(path: Path, *, seed: int, model: str, n: int = 5, bad_line: bool = True) -> Path:
    """A gzip OTLP JSON-lines export: one request per span, plus one truncated line."""
    lines = [
        MessageToJson(encode_spans([span]), indent=None).encode() for span in genai_spans(n, seed=seed, model=model)
    ]
    if bad_line:
        lines.insert(2, b'{"resourceSpans": [')
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n", mtime=0))
    return path


def upload(client: httpx.Client, path: Path, name: str) -> httpx.Response:
    pieces = (path.read_bytes()[i : i + 700] for i in range(0, path.stat().st_size, 700))  # streamed, chunked
    return client.post("/api/v1/ingest", params={"filename": name}, content=pieces)


def _quarantine(live: Live, record_id: str, location: str, reason: str, raw: bytes) -> None:
    """A record as an older spanprism version would have quarantined it."""
    with live.app.state.db.write() as cur:  # type: ignore[attr-defined]
        cur.execute("INSERT INTO quarantine VALUES (?, 'legacy-batch', 'old.jsonl', ?, ?, ?, ?, NULL)",
                    [record_id, location, reason, raw, datetime(2026, 11, 1, tzinfo=UTC)])  # fmt: skip


def large_export(path: Path, *, lines: int, spans_per_line: int, model: str) -> int:
    """A gzip OTLP JSON-lines export of ``lines`` × ``spans_per_line`` distinct LLM calls; returns the call count.

    One SDK-made request is the template; each line renumbers its ids (orjson, not the SDK: tens of thousands of
    spans are built in well under a second).
    """
    template = orjson.loads(MessageToJson(encode_spans(genai_spans(spans_per_line, seed=99, model=model)),
                                          indent=None))  # fmt: skip
    with gzip.open(path, "wb", compresslevel=1) as out:
        for line in range(lines):
            for i, span in enumerate(template["resourceSpans"][0]["scopeSpans"][0]["spans"]):
                span["traceId"] = f"{line + 1:016x}{i:016x}"
                span["spanId"] = f"{line * spans_per_line + i + 1:016x}"
            out.write(orjson.dumps(template) + b"\n")
    return lines * spans_per_line
