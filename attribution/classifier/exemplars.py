"""Exemplar traces of an episode: the calls that look like its typical *regressed* call.

The typical regressed call is a synthetic point: the episode's p90 of the regressed quantity (the slow calls the
p95 is made of, without the one-off outliers at the very top) with median covariates (input, cache-read and
output tokens). The exemplars are the episode's ok calls nearest to it in a standardized space of log tokens and
log latency, so a reader who opens them sees a slow call of ordinary shape, not a freak. Ties are broken by
(trace_id, span_id): the answer does not depend on row order.

Each exemplar is stored with what a reader needs of its call (:func:`with_details`: provider request id, start,
duration, TTFT, tokens, route), taken from the episode's rows already in memory, so the regression page never has
to look the calls up in ``llm_calls`` again.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.attribution.calls_window import CallWindow
from spanprism.attribution.store.calls import EXEMPLAR_COLUMNS
from spanprism.models.times import iso_z

#: How many exemplars to return (at least 3 whenever the episode has 3 ok calls).
DEFAULT_COUNT = 5
TYPICAL_QUANTILE = 0.9


def _quantity(w: CallWindow, metric: str) -> np.ndarray:
    if metric.startswith("ttft_"):
        return w.ttft
    if metric.startswith("itl_"):
        return w.itl
    return w.duration


def _robust_scale(x: np.ndarray) -> float:
    mad = float(np.median(np.abs(x - np.median(x)))) * 1.4826
    return mad if mad > 1e-9 else max(float(np.std(x)), 1.0)


def pick_exemplars(w: CallWindow, *, metric: str = "e2e_p95_ms", count: int = DEFAULT_COUNT) -> list[dict]:
    """Up to ``count`` ``{"trace_id", "span_id"}`` of the episode's calls nearest to the typical regressed call."""
    latency = _quantity(w, metric)
    keep = np.isfinite(latency) & (latency > 0)
    if not np.any(keep):  # e.g. a TTFT metric on calls without TTFT: fall back to the span duration
        latency, keep = w.duration, w.duration > 0
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return []
    coords = np.column_stack(
        [np.log1p(w.input[idx]), np.log1p(w.cached[idx]), np.log1p(w.output[idx]), np.log(latency[idx])]
    )
    target = np.median(coords, axis=0)
    target[-1] = np.quantile(coords[:, -1], TYPICAL_QUANTILE)
    scales = np.array([_robust_scale(coords[:, j]) for j in range(coords.shape[1])])
    dist = np.sqrt((((coords - target) / scales) ** 2).sum(axis=1))
    order = np.lexsort((w.span_id[idx], w.trace_id[idx], np.round(dist, 12)))
    return [{"trace_id": str(w.trace_id[idx[i]]), "span_id": str(w.span_id[idx[i]])} for i in order[:count]]


def with_details(calls: pa.Table, picked: list[dict]) -> list[dict[str, Any]]:
    """``picked`` (``{"trace_id", "span_id"}``) with the :data:`EXEMPLAR_COLUMNS` of their rows in ``calls``.

    JSON-ready: times as ISO-8601 ``Z``, NaN as None; a column ``calls`` lacks is None; an exemplar not in
    ``calls`` keeps only its ids."""
    if not picked:
        return []
    traces = pa.array(sorted({x["trace_id"] for x in picked}), type=calls.schema.field("trace_id").type)
    present = [c for c in EXEMPLAR_COLUMNS if c in calls.column_names]
    rows = calls.filter(pc.is_in(calls.column("trace_id"), value_set=traces)).select(present).to_pylist()
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        found[(row["trace_id"], row["span_id"])] = dict.fromkeys(EXEMPLAR_COLUMNS) | {
            c: _plain(v) for c, v in row.items()
        }
    return [found.get((x["trace_id"], x["span_id"]), dict(x)) for x in picked]


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return iso_z(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
