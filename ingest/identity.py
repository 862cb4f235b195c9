"""Call identity: which stored spans describe the same LLM call (pure, over canonical rows as dicts).

Several emitters can describe one call with two spans (CONVENTIONS.md, "one call, several spans"): the Anthropic
SDK's own span next to an instrumentation's, a Logfire request span next to its ``streaming response`` log span.
Two rows are the same call when one of these rules holds:

* **parent** — same trace, one is the other's nearest LLM ancestor, and the same request: operations and request
  models agree (or one is unknown) and their times overlap (OpenInference's LLM span and the SDK span under it). The
  ancestor is the direct parent, or is reached through non-LLM spans (a framework step, an HTTP client span): the
  loader walks their stored parent links and gives each row its nearest LLM ancestor as :data:`VIA`;
* **response id** — both carry the same ``response_id`` (``msg_…``), the same service, and start within
  :data:`RESPONSE_ID_WINDOW_US` of each other, in any traces (OpenLLMetry and the SDK span sit in two traces);
* **stream log** (weak) — Logfire's ``streaming response from … took …s`` log span, which carries the usage and
  the response model, and the request span it reports on (ended at the response headers, no usage): same service
  and request model, both roots or children of one parent, and the log (re-based by normalize to start where the
  reading of the stream started) starts within :data:`STREAM_GAP_US` of the request span's end;
* **SDK twin** (weak) — an ``anthropic_sdk`` span inside another emitter's span of the same service, operation and
  model that carries no response id (a failed call: OpenLLMetry's error span shares no id with the SDK's).

Weak rules join a pair only when it is unambiguous (neither has another weak candidate), so concurrent calls are
never folded together on timing alone; strong rules always join. :func:`group_calls` turns the links into groups
(union-find over the rows given); :func:`primary` picks, by a rank that does not depend on arrival order, the span
whose ``(trace_id, span_id)`` the merged row keeps.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]

#: Spans of one call sharing a response id start within this of each other (µs).
RESPONSE_ID_WINDOW_US = 10_000_000
#: How far apart the start times of two spans of one call can be at most (a parent covers its child's whole
#: duration): the loader looks for stored partners of a new span only within this window (µs).
SEARCH_WINDOW_US = 15 * 60 * 1_000_000
#: Clock slack between spans written by different libraries in one process (µs).
SLACK_US = 2_000
#: An SDK twin starts at most this long after the span that wraps it (µs).
TWIN_LEAD_US = 1_000_000
#: A Logfire stream log starts (re-based) this close to the end of its request span (µs).
STREAM_GAP_US = 25_000
#: A request span starts at most this long before its stream log (µs); bounds the candidate search.
STREAM_LEAD_US = 60_000_000
STREAM_LOG_PREFIX = "streaming response from"
SDK_CONVENTION = "anthropic_sdk"
#: Transient row key (never stored): the span id of the row's nearest ancestor reached through one or more non-LLM
#: spans' parent links, or None (ingest/fold.py fills it; its direct parent is ``parent_span_id``).
VIA = "_via"
#: Non-LLM spans followed at most between two LLM spans (a guard against cycles in damaged data).
MAX_LINK_DEPTH = 16


def nearest_llm_ancestor(trace_id: str, parent: str | None, links: dict[tuple[str, str], str]) -> str | None:
    """The span reached from ``parent`` by following non-LLM spans' parent links (``links``: (trace, span) →
    parent), when at least one was followed; None when ``parent`` is not a linked non-LLM span."""
    hops, at = 0, parent
    while at is not None and hops < MAX_LINK_DEPTH:
        up = links.get((trace_id, at))
        if up is None:
            break
        at, hops = up, hops + 1
    return at if hops else None


def _parents(row: Row) -> tuple[str | None, str | None]:
    return row["parent_span_id"], row.get(VIA)


def start_us(row: Row) -> int:
    """``start_time`` in µs since the epoch (rows carry it as an int after :func:`as_rows`)."""
    return row["start_time"]


def end_us(row: Row) -> int:
    return row["start_time"] + round((row["duration_ms"] or 0.0) * 1000.0)


def key(row: Row) -> tuple[str, str]:
    return row["trace_id"], row["span_id"]


def is_stream_log(row: Row) -> bool:
    """A Logfire ``streaming response from … took …s`` log span: the reading of a stream, with its usage."""
    name = row.get("span_name") or ""
    return name.startswith(STREAM_LOG_PREFIX)


def _agree(a: Row, b: Row, column: str) -> bool:
    return a[column] is None or b[column] is None or a[column] == b[column]


def same_request(a: Row, b: Row) -> bool:
    """Operations and request models agree (an unknown value agrees with anything)."""
    return _agree(a, b, "operation") and _agree(a, b, "request_model")


def _overlap(a: Row, b: Row) -> bool:
    return start_us(a) <= end_us(b) + SLACK_US and start_us(b) <= end_us(a) + SLACK_US


def _parent_link(a: Row, b: Row) -> bool:
    if a["trace_id"] != b["trace_id"]:
        return False
    related = b["span_id"] in _parents(a) or a["span_id"] in _parents(b)
    return related and same_request(a, b) and _overlap(a, b)


def _response_link(a: Row, b: Row) -> bool:
    rid = a["response_id"]
    return (
        rid is not None
        and rid == b["response_id"]
        and a["service"] == b["service"]
        and abs(start_us(a) - start_us(b)) <= RESPONSE_ID_WINDOW_US
    )


def _stream_log_link(a: Row, b: Row) -> bool:
    """Logfire's stream log (re-based by normalize to cover the stream's reading) starts where the request span
    (ended at the response headers, no usage) ended; both roots, or children of one parent."""
    log, request = (a, b) if is_stream_log(a) else (b, a)
    if not is_stream_log(log) or is_stream_log(request) or request["output_tokens"] is not None:
        return False
    same_place = log["parent_span_id"] == request["parent_span_id"] and (
        log["parent_span_id"] is None or log["trace_id"] == request["trace_id"]
    )
    return (
        same_place
        and log["service"] == request["service"]
        and _agree(log, request, "request_model")
        and abs(start_us(log) - end_us(request)) <= STREAM_GAP_US
    )


def _sdk_twin(a: Row, b: Row) -> bool:
    sdk, other = (a, b) if a["source_convention"] == SDK_CONVENTION else (b, a)
    if sdk["source_convention"] != SDK_CONVENTION or other["source_convention"] == SDK_CONVENTION:
        return False
    return (
        other["response_id"] is None
        and sdk["service"] == other["service"]
        and sdk["operation"] == other["operation"]
        and sdk["request_model"] == other["request_model"]
        and start_us(other) - SLACK_US <= start_us(sdk)
        and end_us(sdk) <= end_us(other) + SLACK_US
    )


def linked(a: Row, b: Row) -> bool:
    """The strong rules (parent, response id): ``a`` and ``b`` describe the same call."""
    return _parent_link(a, b) or _response_link(a, b)


def weakly_linked(a: Row, b: Row) -> bool:
    """The rules that hold only for an unambiguous pair: stream log and SDK twin."""
    return _stream_log_link(a, b) or _sdk_twin(a, b)


class _Sets:
    """Union-find over row indexes."""

    def __init__(self, n: int) -> None:
        self.up = list(range(n))

    def find(self, i: int) -> int:
        while self.up[i] != i:
            self.up[i] = self.up[self.up[i]]
            i = self.up[i]
        return i

    def join(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.up[max(a, b)] = min(a, b)


def _candidate_pairs(rows: Sequence[Row]) -> set[tuple[int, int]]:
    """Index pairs that may be strongly linked: they share a trace (parent, stream log) or a response id."""
    buckets: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        buckets["t", row["trace_id"]].append(i)
        if row["response_id"] is not None:
            buckets["r", row["response_id"]].append(i)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        for x, i in enumerate(members):
            pairs.update((i, j) for j in members[x + 1 :])
    return pairs


def _weak_pairs(rows: Sequence[Row], alone: Sequence[int]) -> dict[int, list[int]]:
    """Weak candidates among rows no strong rule linked: for each SDK span or stream log, the rows of the same
    service and request model that start up to :data:`TWIN_LEAD_US` / :data:`STREAM_LEAD_US` before it."""
    others: dict[tuple[Any, ...], list[tuple[int, int]]] = defaultdict(list)
    for i in alone:
        row = rows[i]
        if row["source_convention"] != SDK_CONVENTION and not is_stream_log(row):
            others[row["service"], row["request_model"]].append((start_us(row), i))
    for bucket in others.values():
        bucket.sort()
    weak: dict[int, list[int]] = defaultdict(list)
    for i in alone:
        row = rows[i]
        lead = STREAM_LEAD_US if is_stream_log(row) else TWIN_LEAD_US
        if not is_stream_log(row) and row["source_convention"] != SDK_CONVENTION:
            continue
        bucket = others.get((row["service"], row["request_model"]), [])
        lo = bisect.bisect_left(bucket, (start_us(row) - lead, -1))
        for _, j in bucket[lo : bisect.bisect_right(bucket, (start_us(row) + SLACK_US, len(rows)))]:
            if weakly_linked(row, rows[j]):
                weak[i].append(j)
                weak[j].append(i)
    return weak


def group_calls(rows: Sequence[Row]) -> list[list[int]]:
    """Indexes of ``rows`` grouped by call (each row in exactly one group), in a deterministic order.

    ``rows`` must be distinct spans; the result depends only on the set of rows, not on their order.
    """
    sets = _Sets(len(rows))
    for i, j in _candidate_pairs(rows):
        if linked(rows[i], rows[j]):
            sets.join(i, j)
    sizes = defaultdict(int)
    for i in range(len(rows)):
        sizes[sets.find(i)] += 1
    alone = [i for i in range(len(rows)) if sizes[sets.find(i)] == 1]
    weak = _weak_pairs(rows, alone)
    for i, partners in weak.items():  # the weak rules: only a pairing that nothing else competes for
        if len(partners) == 1 and len(weak[partners[0]]) == 1:
            sets.join(i, partners[0])
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(rows)):
        groups[sets.find(i)].append(i)
    return sorted((sorted(g, key=lambda i: key(rows[i])) for g in groups.values()), key=lambda g: key(rows[g[0]]))


def rank(row: Row, members: Sequence[Row]) -> tuple[Any, ...]:
    """Sort key of a group's rows: the primary first, then the other sources in order of trust.

    Outer spans first (a span whose parent or nearest LLM ancestor is in the group is the inner one), log spans and
    the SDK's own span last (the application's instrumentation span is what its traces show), ties by ids: order-free.
    """
    keys = {key(m) for m in members}
    inner = any((row["trace_id"], p) in keys for p in _parents(row) if p is not None)
    return (is_stream_log(row), inner, row["source_convention"] == SDK_CONVENTION, key(row))


def sort_ranked(members: Sequence[Row]) -> list[Row]:
    """``members`` in :func:`rank` order (the group's keys computed once)."""
    keys = {key(m) for m in members}

    def order(row: Row) -> tuple[Any, ...]:
        inner = any((row["trace_id"], p) in keys for p in _parents(row) if p is not None)
        return (is_stream_log(row), inner, row["source_convention"] == SDK_CONVENTION, key(row))

    return sorted(members, key=order)


def primary(members: Sequence[Row]) -> Row:
    """The member whose identity (ids, parent, name, convention) the merged row keeps."""
    return min(members, key=lambda r: rank(r, members))
