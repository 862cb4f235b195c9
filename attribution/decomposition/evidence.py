"""The evidence rows of a decomposition: the raw signals a reader (or the classifier) checks the attribution against.

Each row is ``{"signal", "baseline", "observed"}`` (route-share rows add ``"route"``); a value is None when the
window cannot show it (no cache data, no TTFT, no queue spans). Signals are computed on all ok calls of each window.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from spanprism.attribution.calls_window import CallWindow
from spanprism.attribution.decomposition.latency_model import BaselineFit, SideParams, design
from spanprism.models.schema import ROUTE_COLUMNS

#: How many of the largest routes get a share row.
TOP_ROUTES = 3

Value = float | None


def _p(x: np.ndarray, q: float) -> Value:
    x = x[np.isfinite(x)]
    return float(np.quantile(x, q)) if x.size else None


def _cache_ratio(calls: CallWindow) -> Value:
    total = float(np.sum(calls.input))
    return float(np.sum(calls.cached)) / total if total > 0 else None


def _itl(calls: CallWindow) -> np.ndarray:
    return np.where(np.isfinite(calls.itl_obs), calls.itl_obs, calls.itl_derived)


def _calls_per_hour(calls: CallWindow) -> Value:
    start = calls.start_s if calls.start_known else calls.start_s[:0]
    span = float(start.max() - start.min()) if start.size > 1 else 0.0
    return calls.n / (span / 3600.0) if span > 0 else None


def _token_signals(calls: CallWindow, cache_known: bool) -> dict[str, Value]:
    return {
        "uncached_input_tokens_p50": _p(calls.input - calls.cached, 0.5),
        "input_tokens_p50": _p(calls.input, 0.5),
        "cache_read_tokens_p50": _p(calls.cached, 0.5) if cache_known else None,
        "cache_read_ratio": _cache_ratio(calls) if cache_known else None,
        "cache_hit_rate": float(np.mean(calls.cached > 0)) if cache_known and calls.n else None,
        "output_tokens_p50": _p(calls.output, 0.5),
        "itl_p50_ms": _p(_itl(calls), 0.5),
        "queue_p95_ms": _p(calls.queue, 0.95),
        "calls_per_hour": _calls_per_hour(calls),
    }


def model_residual_p50(fit: BaselineFit, params: SideParams, calls: CallWindow, route: np.ndarray) -> Value:
    """Median of (modelled latency part − the baseline model's prediction): the unexplained level shift."""
    X = design(fit.columns, calls.input, calls.cached, calls.output)
    return _p(fit.target(calls) - params.first_part(route, X, fit.floor), 0.5)


def _shares(keys: np.ndarray) -> dict[str, float]:
    counts = Counter(keys.tolist())
    return {k: v / keys.size for k, v in counts.items()} if keys.size else {}


def route_rows(base: CallWindow, epi: CallWindow, dims: list[str]) -> list[dict[str, object]]:
    """Total-variation distance of the mix per route dimension, then the largest routes' shares before/after."""
    rows: list[dict[str, object]] = []
    for dim in ROUTE_COLUMNS:
        tv = 0.0
        if dim in dims:
            sb, se = _shares(base.routes[dim]), _shares(epi.routes[dim])
            # fsum: exact whatever the order of the set, which differs between processes (salted str hashes).
            tv = 0.5 * math.fsum(abs(sb.get(k, 0.0) - se.get(k, 0.0)) for k in set(sb) | set(se))
        rows.append({"signal": f"route_tv_{dim}", "baseline": 0.0, "observed": tv})
    sb, se = _shares(base.route_key_over(dims)), _shares(epi.route_key_over(dims))
    top = sorted(set(sb) | set(se), key=lambda k: (-max(sb.get(k, 0.0), se.get(k, 0.0)), k))[:TOP_ROUTES]
    rows.extend(
        {"signal": "route_share", "route": k, "baseline": sb.get(k, 0.0), "observed": se.get(k, 0.0)} for k in top
    )
    return rows


def build_evidence(
    base: CallWindow,
    epi: CallWindow,
    dims: list[str],
    residual_p50: tuple[Value, Value],
    streaming: bool,
) -> list[dict[str, object]]:
    """All evidence rows; ``residual_p50`` is the baseline model's median miss on each window's modelled calls
    (TTFT for a streaming series, the whole duration otherwise)."""
    cache_known = base.cache_imputed < base.n or epi.cache_imputed < epi.n
    tb, te = _token_signals(base, cache_known), _token_signals(epi, cache_known)
    rows: list[dict[str, object]] = [{"signal": k, "baseline": tb[k], "observed": te[k]} for k in tb]
    name = "ttft_residual_p50_ms" if streaming else "duration_residual_p50_ms"
    rows.insert(7, {"signal": name, "baseline": residual_p50[0], "observed": residual_p50[1]})
    return rows + route_rows(base, epi, dims)
