"""Reading stored llm_calls rows back in tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


CONVENTIONS = ("otel_semconv", "openinference", "openllmetry", "openlit", "langfuse", "vllm")


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "trace_id": f"{offset + i + 1:032x}",
            "span_id": f"{offset + i + 1:016x}",
            "service": "chat-api",
            "provider": "openai",
            "request_model": "gpt-4o",
            "response_model": "gpt-4o-2024-08-06",
            "operation": "chat",
            "server_address": "api.openai.com",
            "start_time": T0 + timedelta(seconds=offset + i),
            "duration_ms": 900.0 + i,
            "ttft_ms": 300.0,
            "itl_ms": 20.0,
            "itl_p95_ms": 30.0,
            "decode_ms": 600.0 + i,
            "streaming": True,
            "status": "ok",
            "input_tokens": 2000 + i,
            "cache_read_tokens": 1024,
            "cache_write_tokens": 0,
            "output_tokens": 31,
            "source_convention": CONVENTIONS[i % len(CONVENTIONS)],
        }
        for i in range(n)
    ]
