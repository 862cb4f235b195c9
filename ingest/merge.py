"""The one row of a call described by several spans: field by field, from the most direct source (pure).

The members are ranked by :func:`spanprism.ingest.identity.rank`; the first is the *primary*, whose identity the
row keeps (ids, parent, span name, convention). Every other field comes from the member that observed it best:

* **time** — the call runs from the earliest member start to the latest member end: a stream ends when its last
  event is read, which the outer span or Logfire's ``streaming response`` log span sees, not a request span that
  ends at the response headers;
* **TTFT** — from the member that measured a first token (attribute or event), as an absolute moment re-based on
  the call's start; decode = end − first token; ITL from the member with per-chunk events, else decode / (n − 1);
* **tokens** — all counts from one member, the one with the most of them (the SDK's span reads the provider's
  usage object and has the cache writes), ties to the SDK's span, then by rank; ``uncached_input_tokens``
  recomputed;
* **server, request id, models, finish reason, …** — the first member in rank order that has a value
  (the server address comes from the client span, the only one that has it);
* **status** — an error when any member saw one; streaming when any member says so.

``merged_span_ids`` lists the other members as ``trace_id:span_id``, sorted: the result depends only on the set.
"""

from __future__ import annotations

from collections.abc import Sequence

from spanprism.ingest.identity import SDK_CONVENTION, Row, end_us, key, sort_ranked, start_us

TOKEN_FIELDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
#: First non-NULL in rank order.
FIRST_PRESENT = (
    "provider_request_id", "service", "tenant", "operation", "provider", "request_model", "server_address",
    "server_port", "region", "deployment", "prompt_key", "queue_ms", "error_type", "session_id",
)  # fmt: skip
#: What the response body said: first non-NULL starting from the member the tokens came from (it read the body;
#: Logfire's request span writes the *request* model as ``gen_ai.response.model`` before the stream is read).
FROM_RESPONSE = ("response_id", "response_model", "system_fingerprint", "finish_reason")
#: Taken from the primary as they are.
IDENTITY = ("trace_id", "span_id", "parent_span_id", "span_name", "source_convention", "ingest_batch")


def _first(ranked: Sequence[Row], column: str) -> object:
    return next((r[column] for r in ranked if r[column] is not None), None)


def _firsts(ranked: Sequence[Row], columns: Sequence[str]) -> dict[str, object]:
    """:func:`_first` of several columns in one walk over the members (the loader merges thousands of calls)."""
    out: dict[str, object] = dict.fromkeys(columns)
    missing: Sequence[str] = columns
    for r in ranked:
        still = []
        for c in missing:
            value = r[c]
            if value is None:
                still.append(c)
            else:
                out[c] = value
        missing = still
        if not missing:
            break
    return out


def _token_source(ranked: Sequence[Row]) -> Row:
    """All counts from the member with the most of them, so they stay mutually consistent; on a tie the SDK's own
    span, which copies the provider's usage object (OpenLLMetry adds ``message_start``'s 1 to Anthropic's final
    output count), then rank order."""
    return max(ranked, key=lambda r: (sum(r[f] is not None for f in TOKEN_FIELDS),
                                      r["source_convention"] == SDK_CONVENTION))  # fmt: skip  # first of ties


def _tokens(best: Row) -> dict[str, int | None]:
    out = {f: best[f] for f in TOKEN_FIELDS}
    inp, read = out["input_tokens"], out["cache_read_tokens"]
    out["uncached_input_tokens"] = inp - read if inp is not None and read is not None else None
    return out


def _timing(ranked: Sequence[Row], start: int, end: int, output: int | None) -> dict[str, object]:
    duration = (end - start) / 1000.0
    measured = next((r for r in ranked if r["ttft_ms"] is not None), None)
    ttft = decode = None
    if measured is not None:
        first_token = start_us(measured) + measured["ttft_ms"] * 1000.0
        ttft = min(max((first_token - start) / 1000.0, 0.0), duration)
        decode = duration - ttft
    chunked = next((r for r in ranked if r["chunk_count"] is not None and r["itl_ms"] is not None), None)
    if chunked is not None:
        itl, p95, chunks = chunked["itl_ms"], chunked["itl_p95_ms"], chunked["chunk_count"]
    else:
        p95, chunks = None, _first(ranked, "chunk_count")
        itl = decode / (output - 1) if decode is not None and output is not None and output >= 2 else None
    return {"duration_ms": duration, "ttft_ms": ttft, "decode_ms": decode, "itl_ms": itl, "itl_p95_ms": p95,
            "chunk_count": chunks}  # fmt: skip


def _streaming(ranked: Sequence[Row]) -> bool | None:
    flags = {r["streaming"] for r in ranked} - {None}
    return True if True in flags else (False if flags else None)


def merge_rows(members: Sequence[Row]) -> Row:
    """The call's row from its member rows (``start_time`` in µs, as :func:`identity.group_calls` takes them)."""
    ranked = sort_ranked(members)
    head = ranked[0]
    start = min(start_us(r) for r in ranked)
    end = max(end_us(r) for r in ranked)
    row: Row = {c: head[c] for c in IDENTITY}
    row.update(_firsts(ranked, FIRST_PRESENT))
    source = _token_source(ranked)
    tokens = _tokens(source)
    row.update(tokens)
    body_first = [source, *(r for r in ranked if r is not source)]
    row.update(_firsts(body_first, FROM_RESPONSE))
    row.update(_timing(ranked, start, end, tokens["output_tokens"]))
    row["start_time"] = start
    row["streaming"] = _streaming(ranked)
    errors = [r for r in ranked if r["status"] == "error"]
    row["status"] = "error" if errors else _first(ranked, "status")
    if errors:
        row["error_type"] = _first(errors, "error_type") or row["error_type"]
    others = sorted(f"{t}:{s}" for t, s in (key(r) for r in ranked[1:]))
    row["merged_span_ids"] = others
    return row
