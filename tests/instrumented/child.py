"""Child program: one real instrumentation library around the official ``openai`` client, exporting OTLP/HTTP.

Run as ``python child.py '<json config>'`` in its own process (instrumentors patch the ``openai`` module
globally, so two libraries must never share an interpreter). Config keys: ``lib`` (see :data:`INSTRUMENTORS`),
``base_url``, ``otlp_endpoint``, ``gzip``, ``service_name``, ``model``, ``fail_model``.

Protocol on stdout: ``SPANPRISM_READY`` once warmed up, instrumented and holding a client; then it waits for one
line on stdin (the parent releases the children one at a time, so timed calls never compete for the CPU), makes
a non-streaming call, a streaming call with ``include_usage`` and a call that fails with 429, flushes and shuts
the tracer provider down, and prints ``SPANPRISM_RESULT <json>``: what the client itself observed, timed with
``time.perf_counter`` (request start → each chunk, request start → done) plus ``time.time_ns`` at each start.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

if __package__ in (None, ""):  # run as a script (the harness does): make ``instrumented`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from instrumented.truth import DISCARDED, WARM_UP_MODEL, Probe, hold, undisturbed, unexported

READY = "SPANPRISM_READY"
RESULT = "SPANPRISM_RESULT "
CHILD_HEADER = "x-spanprism-child"


def _openai_v2(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=provider)


def _openinference(provider: TracerProvider) -> None:
    from openinference.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=provider)


def _openllmetry(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=provider)


def _logfire(provider: Any) -> None:
    import logfire

    logfire.instrument_openai()


def init_openlit(provider: TracerProvider) -> None:
    """OpenLIT reuses the global SDK tracer provider (``setup_tracing`` set it); no metrics, no GPU poller."""
    import openlit

    openlit.init(service_name=provider.resource.attributes.get("service.name", "default"), disable_metrics=True,
                 collect_gpu_stats=False)  # fmt: skip


def _openlit(provider: TracerProvider) -> None:
    init_openlit(provider)


def _langfuse(provider: Any) -> None:
    import langfuse.openai  # noqa: F401  (patches the openai module on import: its drop-in integration)


class FlushVia:
    """A library that owns its tracer provider (Logfire, Langfuse): flushing and shutdown go through it."""

    def __init__(self, flush: Callable[[], Any], shutdown: Callable[[], Any]) -> None:
        self._flush, self._shutdown = flush, shutdown

    def force_flush(self, timeout_millis: int) -> bool:
        self._flush()
        return True

    def shutdown(self) -> None:
        self._shutdown()


def setup_logfire(cfg: dict[str, Any]) -> FlushVia:
    """``logfire.configure`` with no hosted backend (``send_to_logfire=False``): spans go to the capture receiver."""
    import logfire

    exporter = OTLPSpanExporter(endpoint=cfg["otlp_endpoint"], timeout=10)
    logfire.configure(send_to_logfire=False, console=False, service_name=cfg["service_name"],
                      additional_span_processors=[hold(BatchSpanProcessor(exporter))], metrics=False)  # fmt: skip
    return FlushVia(logfire.force_flush, logfire.shutdown)


def setup_langfuse(cfg: dict[str, Any]) -> FlushVia:
    """A Langfuse client whose "host" is the capture receiver: it exports OTLP/HTTP to {host}/api/public/otel."""
    import os

    from langfuse import Langfuse

    os.environ["OTEL_SERVICE_NAME"] = cfg["service_name"]
    host = cfg["otlp_endpoint"].rsplit("/v1/traces", 1)[0]
    client = Langfuse(public_key="pk-lf-spanprism", secret_key="sk-lf-spanprism", host=host, flush_at=100)
    provider = trace.get_tracer_provider()
    if hasattr(provider, "add_span_processor"):  # Langfuse's own SDK provider: note span boundaries (truth.Probe)
        provider.add_span_processor(Probe())
    return FlushVia(client.flush, client.shutdown)


def tracing_for(cfg: dict[str, Any]) -> Any:
    """The tracer provider (or the library's own flusher) for ``cfg["lib"]``."""
    if cfg["lib"].startswith("logfire"):
        return setup_logfire(cfg)
    if cfg["lib"].startswith("langfuse"):
        return setup_langfuse(cfg)
    return setup_tracing(cfg)


#: lib name → instrument function. openai_v2_latest is openai_v2 run with
#: OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental (set by the parent in the environment).
INSTRUMENTORS: dict[str, Callable[[TracerProvider], None]] = {
    "openai_v2": _openai_v2,
    "openai_v2_latest": _openai_v2,
    "openinference": _openinference,
    "openllmetry": _openllmetry,
    "logfire_openai": _logfire,
    "langfuse_openai": _langfuse,
    "openlit_openai": _openlit,
}


def setup_tracing(cfg: dict[str, Any]) -> TracerProvider:
    """A provider with a service.name resource, batching to the capture receiver over OTLP/HTTP protobuf."""
    provider = TracerProvider(resource=Resource.create({"service.name": cfg["service_name"]}))
    compression = Compression.Gzip if cfg.get("gzip") else Compression.NoCompression
    exporter = OTLPSpanExporter(endpoint=cfg["otlp_endpoint"], compression=compression, timeout=10)
    provider.add_span_processor(hold(BatchSpanProcessor(exporter)))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    return provider


def _observed(response: Any) -> dict[str, Any]:
    usage = response.usage.model_dump() if response.usage is not None else None
    return {"response_id": response.id, "response_model": response.model, "usage": usage}


def call_non_stream(client: Any, model: str) -> dict[str, Any]:
    """One plain chat completion."""
    start_ns, start = time.time_ns(), time.perf_counter()
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Sky colour?"}])
    total = time.perf_counter() - start
    return {
        "call": "non_stream",
        **_observed(response),
        "start_ns": start_ns,
        "total_ms": total * 1e3,
        "ttft_ms": None,
        "finish_reason": response.choices[0].finish_reason,
        "fingerprint": response.system_fingerprint,
    }


def call_stream(client: Any, model: str) -> dict[str, Any]:
    """One streamed chat completion with ``include_usage``; times the first chunk as the client sees it."""
    start_ns, start = time.time_ns(), time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Why is it slow?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    returned = time.perf_counter()  # the response headers are in: the client hands the stream over
    chunks: list[Any] = []
    seen: list[float] = []  # when each chunk reached the caller
    for chunk in stream:
        seen.append(time.perf_counter())
        chunks.append(chunk)
    total = time.perf_counter() - start
    assert chunks, "the stream yielded no chunk"
    # [ms after start, carries text]: the caller's own view of the token gaps, to compare the stored ITL with.
    chunk_ms = [
        [(t - start) * 1e3, bool(c.choices and c.choices[0].delta.content)] for t, c in zip(seen, chunks, strict=True)
    ]
    finish = next((c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason), None)
    return {
        "call": "stream",
        **_observed(chunks[-1]),
        "start_ns": start_ns,
        "total_ms": total * 1e3,
        "ttft_ms": chunk_ms[0][0],
        "headers_ms": (returned - start) * 1e3,
        "chunk_ms": chunk_ms,
        "chunks": len(chunks),
        "finish_reason": finish,
        "fingerprint": chunks[0].system_fingerprint,
    }


def call_failing(client: Any, fail_model: str) -> dict[str, Any]:
    """One call the server rejects with 429; the error is caught, as an application would."""
    import openai

    start_ns, start = time.time_ns(), time.perf_counter()
    try:
        client.chat.completions.create(model=fail_model, messages=[{"role": "user", "content": "Again?"}])
    except openai.APIStatusError as exc:
        total = time.perf_counter() - start
        return {
            "call": "error",
            "error_type": type(exc).__name__,
            "status_code": exc.status_code,
            "start_ns": start_ns,
            "total_ms": total * 1e3,
            "ttft_ms": None,
            "response_id": None,
        }
    raise AssertionError("the failing call did not fail")


def warm_up(base_url: str) -> None:
    """One plain and one streamed call before anything is instrumented (so they make no span).

    A fresh process pays several ms of one-off cost (the ``openai`` models are built lazily) on its first
    response and first streamed chunk; left in, it would shift the measured TTFT and first token gap.
    """
    import openai

    with openai.OpenAI(base_url=base_url, api_key="sk-spanprism-dummy", max_retries=0) as client:
        messages = [{"role": "user", "content": "warm up"}]
        client.chat.completions.create(model="warm-up", messages=messages)
        for _ in client.chat.completions.create(
            model="warm-up", messages=messages, stream=True, stream_options={"include_usage": True}
        ):
            pass


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    warm_up(cfg["base_url"])
    provider = tracing_for(cfg)
    # Instrument before the client exists: some libraries patch what the client binds on creation.
    INSTRUMENTORS[cfg["lib"]](provider)
    import openai

    client = openai.OpenAI(
        base_url=cfg["base_url"],
        api_key="sk-spanprism-dummy",
        max_retries=0,
        timeout=30,
        default_headers={CHILD_HEADER: cfg["lib"]},  # lets the server's log tell the children apart
    )
    # The library's own first-call costs (lazy imports, caches) are paid by instrumented calls of a warm-up model.
    unexported(lambda: call_non_stream(client, WARM_UP_MODEL))
    unexported(lambda: call_stream(client, WARM_UP_MODEL))
    print(READY, flush=True)
    sys.stdin.readline()
    calls = [
        undisturbed(lambda: call_non_stream(client, cfg["model"])),
        undisturbed(lambda: call_stream(client, cfg["model"])),
        undisturbed(lambda: call_failing(client, cfg["fail_model"])),
    ]
    client.close()
    flushed = provider.force_flush(timeout_millis=10_000)
    provider.shutdown()
    result = {"lib": cfg["lib"], "flushed": flushed, "calls": calls, "discarded": DISCARDED}
    print(RESULT + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
