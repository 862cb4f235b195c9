"""The OTLP/HTTP receiver against a live server: the real OTel SDK exporter, a JSON client, and every refusal.

Spans are GenAI-semconv LLM calls made by ``opentelemetry-sdk`` (seeded ids, fixed times); the SDK's own
``OTLPSpanExporter`` sends them as protobuf (gzip or plain), authenticated by bearer or by the custom header.
Assertions read the stored rows back from the server's own database handle.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import orjson
import pytest
import zstandard
from conftest import Live
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult
from support.otlp_spans import genai_spans, new_key, stored
from support.spans import good_span, otlp_line

PROTO = "application/x-protobuf"


@pytest.fixture
def ingest_key(server: Live) -> str:
    return new_key(server, "ingest")


def test_sdk_exporter_protobuf_gzip_bearer_and_custom_header(server: Live, ingest_key: str) -> None:
    endpoint = f"{server.url}/v1/traces"
    gz = OTLPSpanExporter(endpoint=endpoint, headers={"authorization": f"Bearer {ingest_key}"},
                          compression=Compression.Gzip, timeout=10)  # fmt: skip
    plain = OTLPSpanExporter(endpoint=endpoint, headers={server.settings.otlp_key_header: ingest_key}, timeout=10)
    first, second = genai_spans(5, seed=1, model="m-gzip"), genai_spans(3, seed=2, model="m-header")
    try:
        assert gz.export(first) == SpanExportResult.SUCCESS
        assert plain.export(second) == SpanExportResult.SUCCESS
        assert gz.export(first) == SpanExportResult.SUCCESS  # a retried export is a no-op
    finally:
        gz.shutdown()
        plain.shutdown()
    for spans, model in ((first, "m-gzip"), (second, "m-header")):
        rows = stored(server, model)
        assert rows == {f"{s.context.span_id:016x}": (
            "otlp-test", f"{model}-2024-07-18", s.attributes["gen_ai.usage.input_tokens"],
            s.attributes["gen_ai.usage.output_tokens"], 700.0) for s in spans}  # fmt: skip
    metrics = server.client.get("/metrics").text
    assert "spanprism_calls_stored_total 8.0" in metrics
    assert "spanprism_spans_received_total 13.0" in metrics


def test_json_partial_success_counts_and_explains_quarantined_spans(server: Live, ingest_key: str) -> None:
    llm = {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}
    model = {"key": "gen_ai.request.model", "value": {"stringValue": "m-json"}}

    def tokens(n: int) -> dict[str, Any]:
        return {"key": "gen_ai.usage.input_tokens", "value": {"intValue": str(n)}}

    body = otlp_line(
        good_span(1, attributes=[llm, model, tokens(100)]),
        good_span(2, attributes=[llm, model, tokens(-5)]),  # normalize refuses it
        good_span(3, startTimeUnixNano="abc"),  # decode refuses it
        good_span(4, attributes=[llm, model, tokens(300)]),
        good_span(5),  # not an LLM call: skipped, not rejected
    )
    with server.as_key(ingest_key) as client:
        reply = client.post("/v1/traces", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    partial = reply.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 2
    assert "negative input tokens: -5" in partial["errorMessage"]
    assert "startTimeUnixNano" in partial["errorMessage"]
    assert sorted(stored(server, "m-json")) == [f"{1:016x}", f"{4:016x}"]
    listed = server.client.get("/api/v1/quarantine", params={"source": "otlp/http"}).json()
    assert listed["count"] == 2
    assert {row["location"] for row in listed["data"]} == {"request span 2", "request span 3"}
    # A clean request answers an empty ExportTraceServiceResponse, in protobuf for a protobuf request.
    clean = encode_spans(genai_spans(2, seed=3, model="m-clean")).SerializeToString()
    with server.as_key(ingest_key) as client:
        reply = client.post("/v1/traces", content=clean, headers={"content-type": PROTO})
    assert (reply.status_code, reply.headers["content-type"]) == (200, PROTO)
    assert not ExportTraceServiceResponse.FromString(reply.content).HasField("partial_success")


@pytest.mark.parametrize("encoding", ["deflate", "zstd", "gzip"])
def test_deflate_zstd_and_gzip_bodies(server: Live, ingest_key: str, encoding: str) -> None:
    raw = encode_spans(genai_spans(2, seed=4, model=f"m-{encoding}")).SerializeToString()
    packed = {"deflate": zlib.compress, "gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress}
    with server.as_key(ingest_key) as client:
        reply = client.post("/v1/traces", content=packed[encoding](raw),
                            headers={"content-type": PROTO, "content-encoding": encoding})  # fmt: skip
    assert reply.status_code == 200, reply.content
    assert len(stored(server, f"m-{encoding}")) == 2


def status_of(reply: httpx.Response) -> status_pb2.Status:
    if reply.headers["content-type"] == "application/json":
        doc = reply.json()
        return status_pb2.Status(code=doc.get("code", 0), message=doc.get("message", ""))
    return status_pb2.Status.FromString(reply.content)


@pytest.mark.parametrize(("body", "content_type", "encoding", "code", "message"), [
    (b"\x0a\xff\xff\xff\x0f", PROTO, None, 400, "invalid protobuf"),
    (b'{"resourceSpans": [', "application/json", None, 400, "truncated JSON"),
    (b'{"name": "not otlp"}', "application/json", None, 400, "not an OTLP envelope"),
    (b"\x1f\x8b" + b"\x00" * 20, PROTO, "gzip", 400, "invalid gzip body"),
    (b"{}", "text/plain", None, 415, "unsupported content type"),
    (b"{}", "application/json", "br", 415, "unsupported content encoding"),
])  # fmt: skip
def test_undecodable_bodies_answer_a_status(server: Live, ingest_key: str, body: bytes, content_type: str,
                                            encoding: str | None, code: int, message: str) -> None:  # fmt: skip
    headers = {"content-type": content_type, **({"content-encoding": encoding} if encoding else {})}
    with server.as_key(ingest_key) as client:
        reply = client.post("/v1/traces", content=body, headers=headers)
    assert reply.status_code == code
    status = status_of(reply)
    assert message in status.message
    assert status.code == 3  # INVALID_ARGUMENT
    assert f'spanprism_otlp_rejected_requests_total{{code="{code}"}} 1.0' in server.client.get("/metrics").text
    kept = server.client.get("/api/v1/quarantine").json()["data"]
    if code == 400:  # the sender must not resend it: the body is kept, as received, with the reason
        assert len(kept) == 1 and kept[0]["location"].startswith("request body") and message in kept[0]["reason"]
        assert server.client.get(f"/api/v1/quarantine/{kept[0]['id']}/raw").content == body
    else:  # a 415 is the client's configuration, not data
        assert kept == []


def test_keys_are_required_and_scoped(server: Live) -> None:
    body = encode_spans(genai_spans(1, seed=5, model="m-auth")).SerializeToString()
    reader = new_key(server, "read")
    with server.as_key(None) as anonymous, server.as_key(reader) as read_only, server.as_key("spk_wrong") as bad:
        assert anonymous.post("/v1/traces", content=body, headers={"content-type": PROTO}).status_code == 401
        assert bad.post("/v1/traces", content=body, headers={"content-type": PROTO}).status_code == 401
        assert read_only.post("/v1/traces", content=body, headers={"content-type": PROTO}).status_code == 403
    assert stored(server, "m-auth") == {}


def test_bodies_over_the_limit_answer_413(make_server) -> None:
    with make_server(max_body_bytes=4000) as live:
        small = encode_spans(genai_spans(2, seed=6, model="m-small")).SerializeToString()
        big = encode_spans(genai_spans(40, seed=7, model="m-big")).SerializeToString()
        assert len(small) < 4000 < len(big) and len(gzip.compress(big)) < 4000
        headers = {"content-type": PROTO}
        assert live.client.post("/v1/traces", content=small, headers=headers).status_code == 200
        assert live.client.post("/v1/traces", content=big, headers=headers).status_code == 413
        chunked = live.client.post("/v1/traces", content=iter([big[:3000], big[3000:]]), headers=headers)
        assert chunked.status_code == 413  # no Content-Length: counted while streaming
        bomb = live.client.post("/v1/traces", content=gzip.compress(big),
                                headers={**headers, "content-encoding": "gzip"})  # fmt: skip
        assert bomb.status_code == 413
        assert "decompressed body exceeds 4000 bytes" in status_of(bomb).message
        assert stored(live, "m-big") == {}


def _post_in_thread(client: httpx.Client, body: bytes, replies: list[httpx.Response]) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: replies.append(client.post("/v1/traces", content=body, headers={"content-type": PROTO})),
        daemon=True,
    )
    thread.start()
    return thread


@pytest.fixture
def tiny_queue(make_server) -> Iterator[Live]:
    with make_server(ingest_queue_spans=5) as live:
        yield live


def test_full_queue_answers_503_with_retry_after_then_recovers(tiny_queue: Live) -> None:
    live, db = tiny_queue, tiny_queue.app.state.db  # type: ignore[attr-defined]
    first = encode_spans(genai_spans(6, seed=8, model="m-first")).SerializeToString()
    later = encode_spans(genai_spans(1, seed=9, model="m-later")).SerializeToString()
    replies: list[httpx.Response] = []
    with db.write_lock:  # the writer cannot commit: the first request stays queued
        thread = _post_in_thread(live.client, first, replies)
        for _ in range(500):  # bounded wait (~5 s) until the request is queued
            if live.app.state.ingest.depth:  # type: ignore[attr-defined]
                break
            threading.Event().wait(0.01)
        assert live.app.state.ingest.depth == 6  # type: ignore[attr-defined]
        refused = live.client.post("/v1/traces", content=later, headers={"content-type": PROTO})
        assert refused.status_code == 503
        assert refused.headers["retry-after"].isdigit()
        assert status_of(refused).code == 14  # UNAVAILABLE
        assert "spanprism_ingest_queue_spans 6.0" in live.client.get("/metrics").text
        assert not replies  # not acknowledged before its rows are committed
    thread.join(10)
    assert replies and replies[0].status_code == 200
    assert len(stored(live, "m-first")) == 6
    assert live.client.post("/v1/traces", content=later, headers={"content-type": PROTO}).status_code == 200
    assert len(stored(live, "m-later")) == 1


def test_concurrent_requests_are_group_committed_with_their_own_batches(server: Live, ingest_key: str) -> None:
    bodies = [encode_spans(genai_spans(4, seed=100 + i, model="m-group")).SerializeToString() for i in range(6)]
    replies: list[httpx.Response] = []
    db = server.app.state.db  # type: ignore[attr-defined]
    with server.as_key(ingest_key) as client:
        with db.write_lock:  # let all six queue up so the writer takes them as one group
            threads = [_post_in_thread(client, body, replies) for body in bodies]
            for _ in range(500):
                if server.app.state.ingest.depth == 24:  # type: ignore[attr-defined]
                    break
                threading.Event().wait(0.01)
        for thread in threads:
            thread.join(10)
    assert [r.status_code for r in replies] == [200] * 6
    assert len(stored(server, "m-group")) == 24
    batches = server.client.get("/api/v1/ingest/batches", params={"source": "otlp/http"}).json()
    assert batches["count"] == 6
    assert {(b["spans_seen"], b["calls_stored"]) for b in batches["data"]} == {(4, 4)}


def test_json_reply_round_trips_as_otlp_json(server: Live, ingest_key: str) -> None:
    body = orjson.dumps({"resourceSpans": []})
    with server.as_key(ingest_key) as client:
        reply = client.post("/v1/traces", content=body, headers={"content-type": "application/json"})
    assert (reply.status_code, reply.json()) == (200, {})


def test_large_bodies_are_decoded_in_worker_processes(make_server) -> None:
    with make_server(ingest_workers=2) as live:
        body = encode_spans(genai_spans(300, seed=10, model="m-pool")).SerializeToString()
        assert len(body) > 32 << 10
        reply = live.client.post("/v1/traces", content=body, headers={"content-type": PROTO})
        assert reply.status_code == 200, reply.content
        assert live.app.state.ingest._processes is not None  # type: ignore[attr-defined]
        assert len(stored(live, "m-pool")) == 300


def test_bodies_waiting_for_decode_are_bounded(server: Live, ingest_key: str) -> None:
    service = server.app.state.ingest  # type: ignore[attr-defined]
    body = encode_spans(genai_spans(1, seed=11, model="m-slots")).SerializeToString()
    with server.as_key(ingest_key) as client, ExitStack() as slots:
        for _ in range(service.max_decoding):  # every decode place taken (as by slow uploads in flight)
            slots.enter_context(service.admitted())
        refused = client.post("/v1/traces", content=body, headers={"content-type": PROTO})
        assert (refused.status_code, refused.headers.get("retry-after")) == (503, "2")
        slots.close()
        assert client.post("/v1/traces", content=body, headers={"content-type": PROTO}).status_code == 200
    assert len(stored(server, "m-slots")) == 1
