"""A series is listed (GET /series) as soon as its first call is stored, before any attribution pass runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from conftest import live_server
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from support.otlp_spans import genai_spans
from support.uploads import export_file, upload

from spanprism.api.services.new_series import NewSeries


def _services(live) -> set[str]:
    return {s["service"] for s in live.client.get("/api/v1/series").json()["data"]}


def test_otlp_and_uploaded_calls_list_their_series_without_a_pass(tmp_path: Path) -> None:
    with live_server(tmp_path, scheduler_enabled=False) as live:
        assert _services(live) == set()
        auth = {"authorization": f"Bearer {live.settings.admin_key}"}
        exporter = OTLPSpanExporter(endpoint=f"{live.url}/v1/traces", headers=auth, timeout=10)
        try:
            assert exporter.export(genai_spans(3, seed=5, service="fresh-otlp")) == SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        assert _services(live) == {"fresh-otlp"}  # the export returned after the commit: listed already
        assert live.client.get("/api/v1/jobs").json()["count"] == 0  # and no attribution pass ran
        path = export_file(tmp_path / "up.jsonl.gz", seed=6, model="m-up", bad_line=False)  # service "otlp-test"
        reply = upload(live.client, path, "up.jsonl.gz")
        assert reply.status_code == 200 and reply.json()["calls_stored"] >= 1, reply.text
        assert _services(live) == {"fresh-otlp", "otlp-test"}


def test_a_known_series_is_not_registered_again() -> None:
    calls = pa.table({"service": ["a", "a"], "provider": ["p", "p"], "request_model": ["m", "m"],
                      "operation": ["chat", "chat"], "start_time": [datetime(2026, 1, 1, tzinfo=UTC)] * 2})  # fmt: skip
    registry = NewSeries()
    registry.known.add(("a", "p", "m", "chat"))
    assert registry._unseen(calls)[0] == []
    assert registry._unseen(calls.set_column(0, "service", pa.array(["b", "b"])))[0] == [("b", "p", "m", "chat")]
