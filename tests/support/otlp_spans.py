"""OTLP receiver test helpers: real SDK GenAI spans, stored rows, keys created through the API."""

from __future__ import annotations

from typing import Any

from conftest import Live
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from support.spans import T0, SeededIds


def genai_spans(n: int, *, seed: int, model: str = "gpt-4o-mini", service: str = "otlp-test") -> list[ReadableSpan]:
    """``n`` GenAI chat spans (plus one non-LLM HTTP child each) with known tokens and models."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=SeededIds(seed))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    llm = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0")
    for i in range(n):
        attrs = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model,
            "gen_ai.response.model": f"{model}-2024-07-18",
            "gen_ai.usage.input_tokens": 1000 + i,
            "gen_ai.usage.output_tokens": 40 + i,
            "server.address": "api.openai.com",
        }
        start = T0 + i * 1_000_000_000
        llm.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attrs, start_time=start).end(
            end_time=start + 700_000_000
        )
    provider.shutdown()
    return list(exporter.get_finished_spans())


def stored(live: Live, model: str) -> dict[str, tuple[Any, ...]]:
    with live.app.state.db.read() as cur:  # type: ignore[attr-defined]
        rows = cur.execute("SELECT span_id, service, response_model, input_tokens, output_tokens, duration_ms "
                           "FROM llm_calls WHERE request_model = ?", [model]).fetchall()  # fmt: skip
    return {row[0]: row[1:] for row in rows}


def new_key(live: Live, *scopes: str) -> str:
    reply = live.client.post("/api/v1/keys", json={"name": "-".join(scopes), "scopes": list(scopes)})
    assert reply.status_code == 201, reply.text
    return reply.json()["key"]
