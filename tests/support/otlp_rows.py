"""Canonical ``llm_calls`` rows for the OTLP writer tests: self-consistent timings, four provider routes, errors.

Shared by ``tests/test_otlp_writer_*.py`` and ``tests/test_otlp_native.py``; seeded (``random.Random``).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

#: (provider, request model, response model, host, explicit region, deployment, fingerprint)
ROUTES = (
    ("openai", "gpt-4o", "gpt-4o-2024-08-06", "api.openai.com", None, None, "fp_f85bea6784"),
    (
        "azure.ai.openai",
        "gpt-4o",
        "gpt-4o-2024-11-20",
        "contoso-eus2.openai.azure.com",
        "eastus2",
        "gpt4o-prod",
        "fp_b705f0c291",
    ),
    ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "api.anthropic.com", None, None, None),
    (
        "aws.bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "bedrock-runtime.us-west-2.amazonaws.com",
        "us-west-2",
        None,
        None,
    ),
)

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def make_row(rng: random.Random, i: int, *, streaming: bool, error: bool = False, route: int | None = None) -> dict:
    """A self-consistent canonical row: duration = TTFT + ITL × (output − 1) + a sub-ms usage-chunk tail."""
    provider, req, resp, host, region, dep, fp = ROUTES[i % len(ROUTES) if route is None else route]
    out = rng.randrange(20, 300)
    inp = rng.randrange(800, 9000)
    ttft, itl = rng.uniform(150, 1500), rng.uniform(8, 45)
    row: dict[str, Any] = {
        "trace_id": f"{rng.getrandbits(128) | 1:032x}",
        "span_id": f"{rng.getrandbits(64) | 1:016x}",
        "parent_span_id": f"{rng.getrandbits(64) | 1:016x}" if i % 3 else None,
        "service": ("checkout", "support-bot")[i % 2],
        "operation": "chat",
        "provider": provider,
        "request_model": req,
        "response_model": resp,
        "system_fingerprint": fp,
        "server_address": host,
        "server_port": None,
        "region": region,
        "deployment": dep,
        "prompt_key": f"answer_v{i % 4}",
        "start_time": T0 + timedelta(seconds=37 * i, microseconds=rng.randrange(10**6)),
        "streaming": streaming,
        "status": "ok",
        "error_type": None,
        "finish_reason": "stop",
        "input_tokens": inp,
        "cache_read_tokens": rng.choice((0, inp // 4, inp // 2)),
        "cache_write_tokens": rng.choice((0, 256)) if provider in ("anthropic", "aws.bedrock") else None,
        "output_tokens": out,
        "reasoning_tokens": None,
        "response_id": f"resp_{i}",
        "provider_request_id": f"req-{i}",
        "session_id": f"sess-{i % 5}",
        "tenant": f"tenant-{i % 3}",
        "ttft_ms": ttft if streaming else None,
        "itl_ms": itl if streaming else None,
        "itl_p95_ms": itl * 1.8 if streaming else None,
        "queue_ms": rng.uniform(0, 40),
        "duration_ms": ttft + itl * (out - 1) + 0.6,
    }
    if error:
        row.update(
            status="error",
            error_type="RateLimitError",
            finish_reason=None,
            input_tokens=None,
            cache_read_tokens=None,
            cache_write_tokens=None,
            output_tokens=None,
            ttft_ms=None,
            itl_ms=None,
            itl_p95_ms=None,
            response_id=None,
            system_fingerprint=None,
            duration_ms=rng.uniform(50, 400),
        )
    return row


def rows_for(convention: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = [make_row(rng, i, streaming=i % 2 == 0, error=i % 7 == 6) for i in range(16)]
    for row in rows:
        row["source_convention"] = convention
        # Provider response ids are unique: rows of different conventions must not share one (the loader would
        # rightly fold spans sharing an id, service and start second into one call: ingest/identity.py).
        row["response_id"] = f"{row['response_id']}_{convention}"
    return rows
