"""Child program: the real ``anthropic`` client (whose 2.x SDK emits its own OTel span per call, on by default),
optionally under one instrumentation library, against the fake Anthropic server, exporting OTLP/HTTP.

Same protocol as :mod:`instrumented.child` (``SPANPRISM_READY``, one stdin line, ``SPANPRISM_RESULT <json>``); the
calls are a non-streaming message, a streamed message (``stream=True``, every event read) and a message the server
rejects with 429. Libraries (``lib``): ``anthropic_sdk`` (no instrumentation: the SDK's own span only),
``openinference_anthropic``, ``openllmetry_anthropic``, ``openlit_anthropic``, ``logfire_anthropic``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

if __package__ in (None, ""):  # run as a script (the harness does): make ``instrumented`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from instrumented.child import CHILD_HEADER, READY, RESULT, tracing_for
from instrumented.truth import DISCARDED, WARM_UP_MODEL, undisturbed, unexported


def _none(provider: TracerProvider) -> None:
    pass


def _openinference(provider: TracerProvider) -> None:
    from openinference.instrumentation.anthropic import AnthropicInstrumentor

    AnthropicInstrumentor().instrument(tracer_provider=provider)


def _openllmetry(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor

    AnthropicInstrumentor().instrument(tracer_provider=provider)


def _openlit(provider: TracerProvider) -> None:
    from instrumented.child import init_openlit

    init_openlit(provider)


def _logfire(provider: TracerProvider) -> None:
    import logfire

    logfire.instrument_anthropic()


def _pydantic_ai(provider: TracerProvider) -> None:
    from pydantic_ai import Agent

    Agent.instrument_all()  # the global tracer provider (set by setup_tracing)


INSTRUMENTORS: dict[str, Callable[[TracerProvider], None]] = {
    "anthropic_sdk": _none,
    "openinference_anthropic": _openinference,
    "openllmetry_anthropic": _openllmetry,
    "openlit_anthropic": _openlit,
    "logfire_anthropic": _logfire,
    "pydantic_ai": _pydantic_ai,
}

MESSAGES = [{"role": "user", "content": "Sky colour?"}]


def _observed(message: Any) -> dict[str, Any]:
    return {"response_id": message.id, "response_model": message.model, "usage": message.usage.model_dump()}


def call_non_stream(client: Any, model: str) -> dict[str, Any]:
    start_ns, start = time.time_ns(), time.perf_counter()
    message = client.messages.create(model=model, max_tokens=64, messages=MESSAGES)
    total = time.perf_counter() - start
    return {"call": "non_stream", **_observed(message), "start_ns": start_ns, "total_ms": total * 1e3,
            "ttft_ms": None, "stop_reason": message.stop_reason}  # fmt: skip


def call_stream(client: Any, model: str) -> dict[str, Any]:
    """A streamed message read to its end; times the first text delta as the caller sees it."""
    start_ns, start = time.time_ns(), time.perf_counter()
    stream = client.messages.create(model=model, max_tokens=64, messages=MESSAGES, stream=True)
    first = None
    response_id = response_model = stop_reason = None
    usage: dict[str, Any] = {}
    for event in stream:
        if event.type == "message_start":
            response_id, response_model = event.message.id, event.message.model
            usage.update(event.message.usage.model_dump())
        elif event.type == "content_block_delta" and first is None:
            first = time.perf_counter()
        elif event.type == "message_delta":
            stop_reason = event.delta.stop_reason
            usage["output_tokens"] = event.usage.output_tokens
    total = time.perf_counter() - start
    assert first is not None, "the stream carried no text"
    return {"call": "stream", "response_id": response_id, "response_model": response_model, "usage": usage,
            "start_ns": start_ns, "total_ms": total * 1e3, "ttft_ms": (first - start) * 1e3,
            "stop_reason": stop_reason}  # fmt: skip


def call_failing(client: Any, fail_model: str) -> dict[str, Any]:
    import anthropic

    start_ns, start = time.time_ns(), time.perf_counter()
    try:
        client.messages.create(model=fail_model, max_tokens=64, messages=MESSAGES)
    except anthropic.APIStatusError as exc:
        return {"call": "error", "error_type": type(exc).__name__, "status_code": exc.status_code,
                "start_ns": start_ns, "total_ms": (time.perf_counter() - start) * 1e3, "ttft_ms": None,
                "response_id": None}  # fmt: skip
    raise AssertionError("the failing call did not fail")


def _agent(client: Any, model: str) -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    return Agent(AnthropicModel(model, provider=AnthropicProvider(anthropic_client=client)))


def _agent_calls(client: Any, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The same three calls through a pydantic-ai agent (its own ``chat`` span around the SDK's), in one event
    loop (the async client's connections belong to it)."""
    import asyncio

    from pydantic_ai.exceptions import ModelHTTPError

    agent = _agent(client, cfg["model"])

    def seen(reply: Any, start_ns: int, start: float, first: float | None, call: str) -> dict[str, Any]:
        return {"call": call, "response_id": reply.provider_response_id, "response_model": reply.model_name,
                "start_ns": start_ns, "total_ms": (time.perf_counter() - start) * 1e3,
                "ttft_ms": (first - start) * 1e3 if first else None}  # fmt: skip

    async def run() -> list[dict[str, Any]]:
        start_ns, start = time.time_ns(), time.perf_counter()
        result = await agent.run("Sky colour?")
        calls = [seen(result.all_messages()[-1], start_ns, start, None, "non_stream")]
        start_ns, start, first = time.time_ns(), time.perf_counter(), None
        async with agent.run_stream("Why is it slow?") as streamed:
            async for _ in streamed.stream_text(delta=True):
                first = first or time.perf_counter()
        calls.append(seen(streamed.all_messages()[-1], start_ns, start, first, "stream"))
        start_ns, start = time.time_ns(), time.perf_counter()
        try:
            await _agent(client, cfg["fail_model"]).run("Again?")
        except ModelHTTPError as exc:
            calls.append({"call": "error", "error_type": "RateLimitError", "status_code": exc.status_code,
                          "start_ns": start_ns, "total_ms": (time.perf_counter() - start) * 1e3, "ttft_ms": None,
                          "response_id": None})  # fmt: skip
        await client.close()
        return calls

    return asyncio.run(run())


def warm_up(base_url: str) -> None:
    """One plain and one streamed call with the SDK's telemetry off (so they make no span), paying one-off costs."""
    import inspect

    import anthropic

    # anthropic < 1 (the OpenLIT venv) has no telemetry of its own, nor the switch.
    quiet = {"open_telemetry": False} if "open_telemetry" in inspect.signature(anthropic.Anthropic).parameters else {}
    with anthropic.Anthropic(base_url=base_url, api_key="sk-ant-dummy", max_retries=0, **quiet) as c:
        c.messages.create(model="warm-up", max_tokens=8, messages=MESSAGES)
        for _ in c.messages.create(model="warm-up", max_tokens=8, messages=MESSAGES, stream=True):
            pass


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    warm_up(cfg["base_url"])
    provider = tracing_for(cfg)
    INSTRUMENTORS[cfg["lib"]](provider)
    import anthropic

    client = anthropic.Anthropic(base_url=cfg["base_url"], api_key="sk-ant-dummy", max_retries=0, timeout=30,
                                 default_headers={CHILD_HEADER: cfg["lib"]})  # fmt: skip
    if cfg["lib"] != "pydantic_ai":  # the library's first-call costs, paid by instrumented warm-up calls
        unexported(lambda: call_non_stream(client, WARM_UP_MODEL))
        unexported(lambda: call_stream(client, WARM_UP_MODEL))
    print(READY, flush=True)
    sys.stdin.readline()
    if cfg["lib"] == "pydantic_ai":
        calls = _agent_calls(anthropic.AsyncAnthropic(base_url=cfg["base_url"], api_key="sk-ant-dummy",
                                                      max_retries=0, timeout=30,
                                                      default_headers={CHILD_HEADER: cfg["lib"]}), cfg)  # fmt: skip
    else:
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
