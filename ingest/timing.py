"""Latency decomposition of one call: duration, TTFT, decode, inter-token latency, queue.

TTFT sources, first present wins (CONVENTIONS.md §7): ``gen_ai.response.time_to_first_chunk`` (s) ·
vLLM ``gen_ai.latency.time_to_first_token`` (s, server-side) · OpenLIT ``gen_ai.server.time_to_first_token`` (s,
only when the span says it streamed: OpenLIT sets TTFT = duration on non-streaming calls) · Langfuse
``completion_start_time`` − start · Vercel AI ``ai.response.msToFirstChunk``/``ai.stream.msToFirstChunk`` (ms) ·
first ``First Token Stream Event`` / chunk event − start. TTFT is never derived from the duration.

Decisions:

* ``decode_ms`` = vLLM ``time_in_model_decode`` when present, else duration − TTFT when TTFT is known.
* ``itl_ms``: the mean gap between token-carrying chunk events; else OpenLIT's ``time_per_output_token``
  (streaming only); else decode / (output − 1) when output ≥ 2 and decode is known (vLLM decode time or
  duration − TTFT). ``itl_p95_ms`` only from chunk events (a mean cannot give a tail).
* Empty chunks: OpenAI streams open with a role-only chunk (sent with the first token) and end with a finish
  chunk and, with ``include_usage``, a usage chunk; none carries text (§8 counts output + 2; real openai 3.x
  streams show output + 3). Their near-zero gaps would drag ITL down, so when the output token count is known
  the surplus (events − output) is removed before averaging: up to two trailing events (finish, usage) and,
  when the surplus is three or more, the leading role event too. ``chunk_count`` still counts every chunk event
  and TTFT still uses the first event (the role chunk arrives with the first token). Without a token count
  nothing is trimmed (a stream without usage has no usage chunk; that small bias is accepted).
* A TTFT outside [0, duration + 1 ms] contradicts the span's own clock and sends the span to quarantine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from spanprism.ingest.coerce import Rejected, seconds
from spanprism.ingest.records import SpanEvent

CHUNK_EVENTS = frozenset({"gen_ai.content.completion.chunk", "llm.content.completion.chunk"})
FIRST_TOKEN_EVENT = "First Token Stream Event"
MAX_DURATION_MS = 24 * 3600 * 1000.0
#: Span clocks and attribute clocks differ by rounding; TTFT may exceed the duration by this much.
TTFT_SLACK_MS = 1.0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NS_PER_US = 1000


class EventSummary(NamedTuple):
    """What one pass over a span's events found."""

    chunk_ns: list[int]
    chunk_event: str | None
    first_token_ns: int | None
    exception_type: str | None
    has_exception: bool


class Timing(NamedTuple):
    """Canonical timing columns of one call, plus whether a client-side streaming signal was seen."""

    duration_ms: float
    ttft_ms: float | None
    decode_ms: float | None
    itl_ms: float | None
    itl_p95_ms: float | None
    queue_ms: float | None
    chunk_count: int | None
    stream_evidence: bool


NO_EVENTS = EventSummary([], None, None, None, False)


def summarize_events(events: list[SpanEvent]) -> EventSummary:
    """Chunk timestamps, the first-token event and the first exception, in one pass."""
    if not events:
        return NO_EVENTS
    chunks: list[int] = []
    chunk_event = first_token = exc_type = None
    has_exc = False
    for event in events:
        name = event["name"]
        if name in CHUNK_EVENTS:
            chunks.append(event["time_ns"])
            chunk_event = name
        elif name == FIRST_TOKEN_EVENT:
            first_token = event["time_ns"] if first_token is None else min(first_token, event["time_ns"])
        elif name == "exception":
            if not has_exc:
                value = event["attributes"].get("exception.type")
                exc_type = value if isinstance(value, str) and value else None
            has_exc = True
    chunks.sort()
    return EventSummary(chunks, chunk_event, first_token, exc_type, has_exc)


def duration_ms(start_ns: int, end_ns: int) -> float:
    """End − start in ms, rejecting spans whose clock is unusable."""
    if start_ns <= 0:
        raise Rejected(f"missing start time ({start_ns})")
    if end_ns < start_ns:
        raise Rejected(f"end before start (end {end_ns}, start {start_ns})")
    duration = (end_ns - start_ns) / 1e6
    if duration > MAX_DURATION_MS:
        raise Rejected(f"duration {duration:.3g} ms is absurd (> 24 h)")
    return duration


def iso_to_ns(key: str, value: Any) -> int:
    """An ISO-8601 timestamp (possibly JSON-double-encoded, as older Langfuse SDKs write it) in epoch ns."""
    text = value
    if isinstance(text, str) and text.startswith('"'):
        with contextlib.suppress(orjson.JSONDecodeError):
            text = orjson.loads(text)
    if not isinstance(text, str):
        raise Rejected(f"{key} is not an ISO timestamp: {value!r}")
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise Rejected(f"{key} is not an ISO timestamp: {value!r}") from None
    if moment.tzinfo is None:  # Langfuse writes UTC; a naive time is UTC, not local
        moment = moment.replace(tzinfo=dt.UTC)
    return ((moment - _EPOCH) // dt.timedelta(microseconds=1)) * _NS_PER_US


def _ttft(
    attrs: Mapping[str, Any], start_ns: int, ev: EventSummary, stream_flag: bool | None
) -> tuple[float | None, bool]:
    """(TTFT ms, whether the source is a client-side streaming signal) by §7 priority."""
    value = attrs.get("gen_ai.response.time_to_first_chunk")
    if value is not None:
        if type(value) is float and 0.0 <= value < 86400.0:  # hot path: a plain double, no call
            return value * 1000.0, True
        return seconds("gen_ai.response.time_to_first_chunk", value) * 1000.0, True
    value = attrs.get("gen_ai.latency.time_to_first_token")
    if value is not None:  # vLLM: server-side, says nothing about client streaming
        return seconds("gen_ai.latency.time_to_first_token", value) * 1000.0, False
    value = attrs.get("gen_ai.server.time_to_first_token")
    if value is not None and stream_flag:
        return seconds("gen_ai.server.time_to_first_token", value) * 1000.0, True
    value = attrs.get("langfuse.observation.completion_start_time")
    if value is not None:
        return (iso_to_ns("langfuse.observation.completion_start_time", value) - start_ns) / 1e6, True
    for key in ("ai.response.msToFirstChunk", "ai.stream.msToFirstChunk"):
        value = attrs.get(key)
        if value is not None:
            return seconds(key, value), True
    first = ev.first_token_ns
    if ev.chunk_ns and (first is None or ev.chunk_ns[0] < first):
        first = ev.chunk_ns[0]
    if first is not None:
        return (first - start_ns) / 1e6, True
    return None, False


def _p95(sorted_gaps: list[float]) -> float:
    """Linear-interpolated 95th percentile (numpy's default method) of a sorted, non-empty list."""
    pos = 0.95 * (len(sorted_gaps) - 1)
    lo = int(pos)
    if lo + 1 >= len(sorted_gaps):
        return sorted_gaps[lo]
    return sorted_gaps[lo] + (sorted_gaps[lo + 1] - sorted_gaps[lo]) * (pos - lo)


def _chunk_itl(chunk_ns: list[int], output_tokens: int | None) -> tuple[float | None, float | None]:
    """Mean and p95 gap between token-carrying chunk events (empty role/finish/usage chunks trimmed)."""
    count = len(chunk_ns)
    surplus = max(count - output_tokens, 0) if output_tokens is not None else 0
    leading = 1 if surplus >= 3 else 0
    times = chunk_ns[leading : count - min(surplus, 2)]
    if len(times) < 2:
        return None, None
    gaps = sorted((b - a) / 1e6 for a, b in itertools.pairwise(times))
    return sum(gaps) / len(gaps), _p95(gaps)


def derive_timing(
    span_start: int,
    span_end: int,
    attrs: Mapping[str, Any],
    ev: EventSummary,
    stream_flag: bool | None,
    output_tokens: int | None,
) -> Timing:
    """All timing columns of one call (see the module doc for every rule)."""
    duration = duration_ms(span_start, span_end)
    ttft, evidence = _ttft(attrs, span_start, ev, stream_flag)
    if ttft is not None and not (0.0 <= ttft <= duration + TTFT_SLACK_MS):
        raise Rejected(f"ttft {ttft:.3f} ms outside [0, duration {duration:.3f} ms]")
    decode_s = attrs.get("gen_ai.latency.time_in_model_decode")
    if decode_s is not None:
        decode: float | None = seconds("gen_ai.latency.time_in_model_decode", decode_s) * 1000.0
    else:
        decode = max(duration - ttft, 0.0) if ttft is not None else None
    itl, p95 = _chunk_itl(ev.chunk_ns, output_tokens) if ev.chunk_ns else (None, None)
    if itl is None and stream_flag:
        tpot = attrs.get("gen_ai.server.time_per_output_token")
        if tpot is not None:
            itl = seconds("gen_ai.server.time_per_output_token", tpot) * 1000.0
    if itl is None and decode is not None and output_tokens is not None and output_tokens >= 2:
        itl = decode / (output_tokens - 1)
    queue_s = attrs.get("gen_ai.latency.time_in_queue")
    queue = seconds("gen_ai.latency.time_in_queue", queue_s) * 1000.0 if queue_s is not None else None
    chunk_count = len(ev.chunk_ns) if ev.chunk_ns else None
    return Timing(duration, ttft, decode, itl, p95, queue, chunk_count, evidence)
