"""A damaged line costs that line only; an input that is not OTLP at all stays recoverable from the quarantine."""

from __future__ import annotations

import io
import random
from pathlib import Path

from support.fold_spans import otlp_line

from spanprism.api.storage.connect import open_db
from spanprism.ingest.decode import decode_chunk, iter_chunks
from spanprism.ingest.pipeline import ingest_paths


def _span(i: int) -> dict[str, object]:
    start = 1_796_000_000_000_000_000 + i * 10**9
    return {
        "trace_id": f"{i + 1:032x}", "span_id": f"{i + 1:016x}", "parent_span_id": None, "name": "chat gpt-4o",
        "kind": 3, "start_ns": start, "end_ns": start + 250_000_000, "status_code": 0, "events": [],
        "scope": "opentelemetry.instrumentation.openai_v2", "resource": {"service.name": "svc"},
        "attributes": {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                       "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 100 + i,
                       "gen_ai.usage.output_tokens": 10},
    }  # fmt: skip


def test_damaged_first_middle_and_torn_last_line_lose_only_themselves(tmp_path: Path) -> None:
    good = [otlp_line(_span(i)) for i in range(60)]
    first = b"\xff\xfe\x00\x00" + good[0][: len(good[0]) // 2]  # a torn write: NULs and invalid UTF-8, cut short
    middle = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "ab'
    torn = good[59][:-40]
    lines = [first, *good[:30], middle, *good[30:59], torn]
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"\n".join(lines))  # the torn last line has no newline
    con = open_db(tmp_path / "t.duckdb")
    summary = ingest_paths(con, [path])
    bad = con.sql("SELECT location, raw, reason FROM quarantine ORDER BY location").fetchall()
    stored = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    con.close()
    assert (summary.calls_stored, summary.quarantined) == (59, 3) == (stored, len(bad))
    by_line = {loc: (raw, reason) for loc, raw, reason in bad}
    assert set(by_line) == {"line 1", "line 32", f"line {len(lines)}"}
    assert by_line["line 1"][0] == first and by_line["line 1"][1].startswith("invalid UTF-8 at byte 0")
    assert by_line["line 32"][0] == middle and by_line["line 32"][1].startswith("truncated JSON")
    assert by_line[f"line {len(lines)}"][0] == torn


def test_unrecognized_input_is_kept_whole_up_to_the_record_limit(tmp_path: Path) -> None:
    data = random.Random(13).randbytes(193 << 10).replace(b"\n", b"\x00").replace(b"{", b"\x01")
    data = b"\x13\x37" + data  # not a gzip/zstd/proto/JSON start
    path = tmp_path / "garbage.bin"
    path.write_bytes(data)
    con = open_db(tmp_path / "t.duckdb")
    summary = ingest_paths(con, [path])
    ((raw, reason),) = con.sql("SELECT raw, reason FROM quarantine").fetchall()
    con.close()
    assert (summary.spans_seen, summary.calls_stored, summary.quarantined) == (1, 0, 1)
    assert raw == data and f"{len(data)} bytes, kept whole" in reason
    (chunk,) = iter_chunks(io.BytesIO(data), "garbage.bin", max_record_bytes=1000)
    (item,) = decode_chunk(chunk).quarantined
    assert item.raw == data[:1000] and "first 1000 kept" in item.reason and "garbage.bin" in item.reason
