"""Golden files for the instrumented runs: what of a stored row is pinned, and how timings are compared.

Ids, times and the batch differ per run, so they become a presence marker (their values are asserted against the
run itself). Timings are kept, rounded, and compared loosely (see :data:`GOLDEN_TIMING_SLACK_MS`); every other
column must match exactly, type included.
"""

from __future__ import annotations

from typing import Any

from spanprism.ingest.pipeline import IngestSummary

#: Golden timings only grow with machine load (+170 ms seen on a 7 ms call with two copies of this module and
#: benchmarks sharing the 2 cores), so a golden timing pins presence and scale: [golden / 2 − 5 ms,
#: 2 × golden + 250 ms] still catches a seconds-for-ms or ×1000 unit error. test_instrumented.py bounds every timing
#: by the server's and the caller's clocks instead, which holds under any load.
GOLDEN_TIMING_SLACK_MS = (5.0, 250.0)
TIMING_FIELDS = ("duration_ms", "ttft_ms", "decode_ms", "itl_ms", "itl_p95_ms", "queue_ms")
#: Differ per run: replaced by a presence marker in golden files (their values are asserted against the run).
VOLATILE_FIELDS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "response_id",
    "provider_request_id",
    "start_time",
    "ingest_batch",
    "server_port",
)


def golden_view(rows: dict[str, dict[str, Any]], s: IngestSummary) -> dict[str, Any]:
    """Stored rows keyed by call, volatile fields as presence markers, timings rounded; plus the ingest counts."""
    calls: dict[str, Any] = {}
    for call, row in rows.items():
        view: dict[str, Any] = {}
        for key, value in row.items():
            if key in VOLATILE_FIELDS:
                view[key] = None if value is None else "<set>"
            elif key in TIMING_FIELDS and value is not None:
                view[key] = round(value, 1)
            else:
                view[key] = value
        calls[call] = view
    summary = {
        "spans_seen": s.spans_seen,
        "calls_stored": s.calls_stored,
        "quarantined": s.quarantined,
        "non_llm_skipped": s.non_llm_skipped,
        "conventions": dict(sorted(s.conventions.items())),
    }
    return {"summary": summary, "calls": calls}


def golden_diff(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Differences between golden and actual; timing fields match within the golden timing tolerance."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [
            f"{path}.{k}: missing from {'actual' if k in expected else 'golden'}"
            for k in sorted(set(expected) ^ set(actual))
        ]
        for k in sorted(set(expected) & set(actual)):
            out += golden_diff(expected[k], actual[k], f"{path}.{k}")
        return out
    field = path.rsplit(".", 1)[-1]
    if field in TIMING_FIELDS and isinstance(expected, float) and isinstance(actual, float):
        low, high = GOLDEN_TIMING_SLACK_MS
        ok = expected / 2 - low <= actual <= 2 * expected + high
    else:
        ok = expected == actual and type(expected) is type(actual)
    return [] if ok else [f"{path}: golden {expected!r}, got {actual!r}"]
