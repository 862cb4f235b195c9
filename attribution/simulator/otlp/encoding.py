"""Low-level pieces of OTLP JSON writing: AnyValue attributes, timestamps, chunk timing and filler text.

Shared by :mod:`spanprism.attribution.simulator.otlp.conventions` (per-convention attribute builders) and
:mod:`attribution.simulator.otlp.writer` (spans, envelopes, files). Everything here is pure and deterministic for a
given ``random.Random``; it is on the hot path of writing a million spans, so it avoids per-call allocation
where it can (precomputed text pool, one comprehension per attribute list).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def any_value(value: Any) -> dict[str, Any]:
    """One OTLP JSON ``AnyValue`` (CONVENTIONS §6): int64 as a decimal string, double as a number."""
    kind = type(value)  # exact-type fast path first: this runs for every attribute of every span
    if kind is str:
        return {"stringValue": value}
    if kind is int:
        return {"intValue": str(value)}
    if isinstance(value, bool):  # bool before int: True is an int in Python
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": kv_list(value)}}
    if isinstance(value, bytes):
        import base64

        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"cannot encode {type(value).__name__} as an OTLP AnyValue")


def kv_list(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"key", "value"}]`` for every attribute whose value is not None (NULL fields are simply omitted)."""
    return [{"key": k, "value": any_value(v)} for k, v in attrs.items() if v is not None]


def resource_spans(span: Mapping[str, Any]) -> dict[str, Any]:
    """One SpanRecord-shaped dict (``trace_id``, ``attributes``, ``events``…) as one OTLP JSON ``ResourceSpans``.

    The inverse of the decoder's record for one span: benchmarks and tests clone captured spans through it.
    """
    body: dict[str, Any] = {
        "traceId": span["trace_id"],
        "spanId": span["span_id"],
        "name": span["name"],
        "kind": span["kind"],
        "startTimeUnixNano": str(span["start_ns"]),
        "endTimeUnixNano": str(span["end_ns"]),
        "attributes": kv_list(span["attributes"]),
        "events": [{"name": e["name"], "timeUnixNano": str(e["time_ns"]), "attributes": kv_list(e["attributes"])}
                   for e in span["events"]],
        "status": {"code": span["status_code"]},
    }  # fmt: skip
    if span["parent_span_id"]:
        body["parentSpanId"] = span["parent_span_id"]
    return {"resource": {"attributes": kv_list(span["resource"])},
            "scopeSpans": [{"scope": {"name": span["scope"]}, "spans": [body]}]}  # fmt: skip


def to_ns(value: Any) -> int:
    """Unix nanoseconds of a row timestamp: aware/naive (= UTC) datetime, pandas Timestamp, or int µs."""
    if isinstance(value, datetime):
        nanos = getattr(value, "value", None)  # pandas.Timestamp carries exact ns
        if isinstance(nanos, int) and hasattr(value, "tz_localize"):
            return nanos
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return ((aware - _EPOCH) // _US) * 1000
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value) * 1000  # the llm_calls schema stores µs
    if hasattr(value, "astype"):  # numpy.datetime64
        return int(value.astype("datetime64[ns]").astype("int64"))
    raise TypeError(f"start_time must be a datetime or epoch µs, got {type(value).__name__}")


def iso_utc(ns: int) -> str:
    """ISO-8601 UTC with microseconds and a ``Z`` (the form Langfuse SDKs write)."""
    return (_EPOCH + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def num(value: Any) -> float | None:
    """A row number as float, None for NULL/NaN (rows may come from pandas with NaN for NULL)."""
    if value is None:
        return None
    out = float(value)
    return None if math.isnan(out) else out


def count(value: Any) -> int | None:
    """A row token count as int, None for NULL/NaN."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return int(value)


# ---------------------------------------------------------------------------------------------------------------
# Chunk timing: one event per output chunk reproducing TTFT, the mean ITL exactly and the p95 ITL approximately.

#: p95/mean ratio assumed when a row has a mean ITL but no p95 (typical of hosted decoding, llmperf data).
DEFAULT_P95_RATIO = 1.6


def chunk_gaps_ms(gaps: int, mean: float, p95: float | None, rng: random.Random) -> list[float]:
    """``gaps`` inter-chunk gaps (ms) whose mean is exactly ``mean`` and whose p95 is close to ``p95``.

    Decoding is mostly steady with occasional slow steps (batch joins, preemption), so the gaps are a fast
    group with ±40 % jitter plus a slow group of just over 5 % sitting at ``p95`` (±2 %): the 95th percentile
    then lands inside the slow group. The fast group is rescaled so the total, hence the mean, is exact. When
    ``p95`` is so far above ``mean`` that the fast gaps would have to be near zero, the slow group is lowered
    (the requested p95 cannot co-exist with that mean and a sane fast group).
    """
    if gaps <= 0:
        return []
    if p95 is None:
        p95 = mean * DEFAULT_P95_RATIO
    if gaps == 1 or p95 <= mean or mean <= 0:
        return [mean] * gaps
    slow = min(gaps - 1, int(0.05 * (gaps - 1)) + 2)
    fast = gaps - slow
    floor = 0.2 * mean
    if (mean * gaps - p95 * slow) / fast < floor:
        p95 = (mean * gaps - floor * fast) / slow
    slow_gaps = [p95 * rng.uniform(0.98, 1.02) for _ in range(slow)]
    base = (mean * gaps - sum(slow_gaps)) / fast
    # Keep fast gaps below the slow group so the percentile ordering holds.
    spread = max(0.0, min(0.4, (min(slow_gaps) / base - 1.0) / 1.5)) if base > 0 else 0.0
    raw = [rng.uniform(1.0 - spread, 1.0 + spread) for _ in range(fast)]
    scale = (mean * gaps - sum(slow_gaps)) / sum(raw)
    out = [r * scale for r in raw] + slow_gaps
    rng.shuffle(out)
    return out


def chunk_times_ns(start_ns: int, ttft_ms: float, gaps_ms: list[float]) -> list[int]:
    """Absolute event times: the first chunk at start + TTFT, then one per gap (cumulative, rounded once)."""
    times = [start_ns + round(ttft_ms * 1e6)]
    acc = ttft_ms
    for gap in gaps_ms:
        acc += gap
        times.append(start_ns + round(acc * 1e6))
    return times


# ---------------------------------------------------------------------------------------------------------------
# Filler text for message contents (sized, deterministic, cheap: slices of one precomputed pool).

_PROSE = (
    "the customer asked about latency of the retrieval step and whether cached context was reused for this "
    "session summarize the attached policy document in three bullet points then list open questions for the "
    "billing team please answer concisely using only the provided context if the answer is not in the "
    "context say you do not know the deployment runs in two regions with a shared prompt prefix and a "
    "per tenant system message that includes tool definitions for search calendar and ticket lookup"
)
_WORDS = _PROSE.split(" ")


def _build_pool(size: int = 1 << 16) -> str:
    gen = random.Random(20240607)
    parts: list[str] = []
    total = 0
    while total < size:
        word = gen.choice(_WORDS)
        parts.append(word)
        total += len(word) + 1
    return " ".join(parts)


_POOL = _build_pool()


def filler(chars: int, rng: random.Random) -> str:
    """About ``chars`` characters of plausible prose starting at a random word of the pool."""
    chars = max(1, min(chars, len(_POOL) // 2))
    at = _POOL.find(" ", rng.randrange(len(_POOL) - chars - 1)) + 1
    return _POOL[at : at + chars]
