"""Calls whose spans are chained through non-LLM spans (tests/test_fold_chains.py and the ClickHouse store's test).

The real OpenInference + Anthropic SDK capture (tests/fixtures/normalize/anthropic_openinference.json: the SDK span
is a direct child of OpenInference's) is re-parented through non-LLM spans, as an application's own span or an
HTTP client span would sit between them: one hop on two calls, two hops on the third, plus a leaf non-LLM span and
an unrelated server span; the first two calls are made concurrent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

FIXTURE = Path(__file__).parent.parent / "fixtures" / "normalize" / "anthropic_openinference.json"
SDK_SCOPE = "com.anthropic.sdk.python"
INTERNAL, SERVER, CLIENT = 1, 2, 3


def _between(parent: dict[str, Any], child: dict[str, Any], hops: int, tag: str) -> list[dict[str, Any]]:
    """``hops`` non-LLM spans from ``parent`` down to ``child`` (re-parented onto the last one)."""
    out, above = [], parent["span_id"]
    for n in range(hops):
        span_id = f"{tag}{n:x}".ljust(16, "0")[:16]
        kind = CLIENT if n == hops - 1 else INTERNAL  # an app step, then an HTTP client span
        pad = 1000 * (hops - n)
        out.append({**parent, "span_id": span_id, "parent_span_id": above, "name": f"step {n}", "kind": kind,
                    "scope": "app.framework", "attributes": {"app.step": n}, "events": [],
                    "start_ns": child["start_ns"] - pad, "end_ns": child["end_ns"] + pad})  # fmt: skip
        above = span_id
    child["parent_span_id"] = above
    return out


def _shift(span: dict[str, Any], by_ns: int) -> None:
    span["start_ns"] += by_ns
    span["end_ns"] += by_ns
    for event in span["events"]:
        event["time_ns"] += by_ns


def chain_sides() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The three sides of the capture: the OpenInference spans, the non-LLM spans, the SDK spans."""
    spans = orjson.loads(FIXTURE.read_bytes())
    # The streamed call made concurrently with the plain one (same model, overlapping): timing alone can no longer
    # tell which SDK span belongs to which OpenInference span, only the trace can.
    firsts = sorted((s for s in spans if s["scope"] != SDK_SCOPE), key=lambda s: s["start_ns"])
    for span in spans:
        if span["trace_id"] == firsts[1]["trace_id"]:
            _shift(span, firsts[0]["start_ns"] + 100_000 - firsts[1]["start_ns"])
    outer = {s["span_id"]: s for s in spans if s["scope"] != SDK_SCOPE}
    sdk = sorted((s for s in spans if s["scope"] == SDK_SCOPE), key=lambda s: s["start_ns"])
    links: list[dict[str, Any]] = []
    for i, child in enumerate(sdk):
        parent = outer[child["parent_span_id"]]
        links += _between(parent, child, 2 if i == 2 else 1, f"c{i}")
        # Spans that lie between no LLM spans: a leaf under the outer span, a server span starting the request.
        links.append({**links[-1], "span_id": f"d{i}".ljust(16, "e"), "parent_span_id": parent["span_id"],
                      "name": "db query", "kind": CLIENT})  # fmt: skip
        links.append({**links[-1], "span_id": f"f{i}".ljust(16, "a"), "parent_span_id": "ab" * 8, "kind": SERVER})
    return list(outer.values()), links, sdk
