"""Explainable latency decomposition: how much of a metric's change each mechanism caused (``contributions_ms``).

``decompose(window_of(baseline_calls), window_of(episode_calls), metric="e2e_p95_ms")`` (call windows, see
:mod:`spanprism.attribution.calls_window`) splits ``observed − baseline`` of a series' metric into prefill_growth,
cache_eviction, output_growth, routing_change, batch_contention and residual, summing exactly to the change. Method:

1. **Latency model** (latency_model.py), fitted on the baseline window with a Huber-robust regression of relative
   errors (statsmodels RLM). Streaming calls: TTFT ~ route level + uncached tokens + cache-read tokens (network +
   queue + prefill + a small cost per cached token); decode = duration − TTFT ~ ITL × (output − 1), ITL per route =
   the median per-call ITL. Non-streaming series (no TTFT): duration ~ route level + uncached + cached + output.
   Routes are the combinations of the route dimensions (region, server_address, deployment, response_model,
   system_fingerprint) that vary; a route with ≥ 50 baseline calls gets its own slopes, one with ≥ 10 its own
   level, rarer routes the series-level coefficients. Degenerate covariates (no variance, too few rows, a negative
   slope) are dropped; NULL cache reads count as 0 (flagged in ``model_fit``).
2. **Groups.** PROMPT SIZE (input tokens), CACHE STATE (cache-read tokens, clipped to the prompt; uncached =
   input − cached), OUTPUT SIZE (output tokens), ROUTE (the route a call took), RATES (per-route level/ITL/scale and
   each call's own noise). Cache state is carried as cache-read *tokens*, not the cache-read *share*: when prompts
   grow while the cached prefix stays (the RAG / history trap) the share falls with no eviction at all, and a
   share-based group books 30–50% of pure prompt growth as eviction (measured on the test physics).
   Episode-side rates per route: TTFT shift = median(observed TTFT − baseline prediction), ITL = the episode's
   median (non-streaming: a duration scale = median(observed / prediction)). A route the baseline barely saw takes
   episode-estimated parameters on both sides, so moving traffic onto it counts as ROUTE, not RATES.
3. **Synthetic calls** (shapley.py). Instead of pairing each episode call with one random baseline call, the two
   windows are paired by a quantile coupling on prompt size (seeded random tie-breaking) with integer weights: each
   pair has a baseline-side and an episode-side value of every group, and the weighted pairs reproduce both windows
   exactly, so v(∅) = baseline and v(all) = observed (up to float rounding) and no resampling noise leaks into the
   residual. v(S) = the metric (inverted-CDF quantile or mean) of the model latency with the groups in S at episode
   values and the rest at baseline values; exact Shapley values over the 5 groups (32 evaluations) give
   ``group_effects_ms``.
4. **Labels.** PROMPT → prefill_growth, CACHE → cache_eviction, OUTPUT → output_growth, ROUTE → routing_change,
   RATES → batch_contention when the rates effect is positive and ITL, TTFT level, queue or scale rose by ≥ 10% on
   routes carrying ≥ 80% of the episode's traffic on known routes, else → residual. ``residual`` also absorbs
   (observed − baseline) − Σ(group effects), e.g. calls outside the model (streaming calls without TTFT).

Metrics: ``{e2e|ttft|itl}_{pNN|mean}_ms``; quantiles are inverted-CDF (an observed call latency, no interpolation).
Error calls are excluded from both windows.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from spanprism.attribution.calls_window import CallWindow, varying_route_dims
from spanprism.attribution.decomposition.evidence import build_evidence, model_residual_p50
from spanprism.attribution.decomposition.latency_model import (
    BaselineFit,
    RouteRates,
    SideParams,
    calibrate_sides,
    fit_baseline,
    residuals,
)
from spanprism.attribution.decomposition.shapley import GROUPS, LatencyGame, MetricSpec, SideValues, quantile_coupling
from spanprism.attribution.vocabulary import CONTRIBUTION_KEYS

GROUP_LABEL = {
    "prompt_size": "prefill_growth",
    "cache_state": "cache_eviction",
    "output_size": "output_growth",
    "route": "routing_change",
}
#: "Nearly all" routes: the share of episode traffic (on routes known to the baseline) whose rates must have risen.
CONTENTION_ROUTE_SHARE = 0.8
#: A series is modelled as streaming when at least this share of each window's calls has a TTFT.
STREAMING_SHARE = 0.5
_METRIC = re.compile(r"^(e2e|ttft|itl)_(?:p(\d{1,2}(?:\.\d+)?)|(mean))_ms$")


def parse_metric(metric: str) -> MetricSpec:
    """``e2e_p95_ms`` → MetricSpec("e2e", 0.95); ``ttft_mean_ms`` → MetricSpec("ttft", None)."""
    match = _METRIC.match(metric)
    if not match or (match.group(2) and not 0 < float(match.group(2)) <= 100):
        raise ValueError(
            f"unsupported metric {metric!r}: expected e.g. e2e_p95_ms, ttft_p50_ms, itl_p95_ms, e2e_mean_ms"
        )
    return MetricSpec(match.group(1), float(match.group(2)) / 100 if match.group(2) else None)


@dataclass
class Decomposition:
    """The attribution of one metric change between a baseline and an episode window."""

    metric: str
    baseline_value: float
    observed_value: float
    contributions_ms: dict[str, float]
    group_effects_ms: dict[str, float]
    rates_label: str  # where the RATES group was booked: batch_contention or residual
    evidence: list[dict[str, object]] = field(default_factory=list)
    model_fit: dict[str, object] = field(default_factory=dict)
    seed: int = 0

    @property
    def change_ms(self) -> float:
        return self.observed_value - self.baseline_value

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable (plain floats, ints, strings, None)."""
        return {
            "metric": self.metric,
            "baseline": self.baseline_value,
            "observed": self.observed_value,
            "change_ms": self.change_ms,
            "contributions_ms": dict(self.contributions_ms),
            "group_effects_ms": dict(self.group_effects_ms),
            "rates_label": self.rates_label,
            "evidence": [dict(row) for row in self.evidence],
            "model_fit": _plain(self.model_fit),
            "seed": self.seed,
        }


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def metric_values(calls: CallWindow, spec: MetricSpec) -> np.ndarray:
    """Per-call values of the metric's quantity (NaN where a call cannot show it)."""
    if spec.quantity == "ttft":
        return calls.ttft
    if spec.quantity == "itl":
        return np.where(np.isfinite(calls.itl_obs), calls.itl_obs, calls.itl_derived)
    return calls.duration


def _window_value(calls: CallWindow, spec: MetricSpec, which: str) -> float:
    values = metric_values(calls, spec)
    value = spec.summarize(values, np.ones(values.size, dtype=np.int64))
    if not np.isfinite(value):
        raise ValueError(f"the {which} window has no call with a {spec.quantity} value")
    return value


def _is_streaming(base: CallWindow, epi: CallWindow) -> bool:
    return all(np.mean(np.isfinite(c.ttft)) >= STREAMING_SHARE for c in (base, epi))


def decompose(baseline: CallWindow, episode: CallWindow, *, metric: str = "e2e_p95_ms", seed: int = 0) -> Decomposition:
    """Attribute ``observed − baseline`` of ``metric`` to mechanisms (see the module docstring for the method)."""
    spec = parse_metric(metric)
    dims = varying_route_dims(baseline, episode)
    base, epi = baseline.in_id_order(), episode.in_id_order()
    streaming = base.n > 0 and epi.n > 0 and _is_streaming(base, epi)
    if spec.quantity != "e2e" and base.n and epi.n and not streaming:
        raise ValueError(f"{metric} needs a streaming series (most calls with a TTFT in both windows)")
    baseline_value, observed_value = _window_value(base, spec, "baseline"), _window_value(epi, spec, "episode")
    base_m = base.take(np.isfinite(base.ttft)) if streaming else base
    epi_m = epi.take(np.isfinite(epi.ttft)) if streaming else epi
    keys = [w.route_key_over(dims) for w in (base_m, epi_m)]
    routes, codes = np.unique(np.concatenate(keys), return_inverse=True)
    rb, re_ = codes[: base_m.n], codes[base_m.n :]
    rng = np.random.default_rng(seed)
    fit = fit_baseline(base_m, rb, routes.size, streaming, rng)
    base_side, epi_side, per_route = calibrate_sides(fit, base_m, rb, epi_m, re_)
    game = _game(fit, (base_side, epi_side), (base_m, rb), (epi_m, re_), spec, rng)
    effects, v_empty, v_full = game.shapley()
    if not all(np.isfinite(v) for v in effects.values()):
        # The modelled calls cannot show the metric (e.g. ITL without token counts): book the change as residual.
        effects = dict.fromkeys(GROUPS, 0.0)
    rose_share = _rose_share(per_route)
    rates_label = "batch_contention" if effects["rates"] > 0 and rose_share >= CONTENTION_ROUTE_SHARE else "residual"
    residual_p50 = (model_residual_p50(fit, fit.params, base_m, rb), model_residual_p50(fit, fit.params, epi_m, re_))
    model_fit = _model_fit(fit, routes, per_route, base, epi, (v_empty, v_full), rose_share, dims, game.weights.size)
    return Decomposition(
        metric=metric,
        baseline_value=baseline_value,
        observed_value=observed_value,
        contributions_ms=_contributions(effects, rates_label, observed_value - baseline_value),
        group_effects_ms=effects,
        rates_label=rates_label,
        evidence=build_evidence(base, epi, dims, residual_p50, streaming),
        model_fit=model_fit,
        seed=seed,
    )


def _game(
    fit: BaselineFit,
    sides: tuple[SideParams, SideParams],
    base: tuple[CallWindow, np.ndarray],
    epi: tuple[CallWindow, np.ndarray],
    spec: MetricSpec,
    rng: np.random.Generator,
) -> LatencyGame:
    """Weighted synthetic calls from the quantile coupling on prompt size, each side with its own residuals."""
    (b, rb), (e, re_) = base, epi
    ib, ie, weights = quantile_coupling(b.input, e.input, rng)
    base_side = SideValues(b.input, b.cached, b.output, rb, residuals(fit, sides[0], b, rb)).take(ib)
    epi_side = SideValues(e.input, e.cached, e.output, re_, residuals(fit, sides[1], e, re_)).take(ie)
    return LatencyGame(fit, base_side, epi_side, sides, weights, spec)


def _rose_share(per_route: list[RouteRates]) -> float:
    """Share of the episode's calls on baseline-known routes whose rates rose (0 when no such calls)."""
    known = [row for row in per_route if row.known and row.n_episode > 0]
    total = sum(row.n_episode for row in known)
    return sum(row.n_episode for row in known if row.rose) / total if total else 0.0


def _contributions(effects: dict[str, float], rates_label: str, change: float) -> dict[str, float]:
    out = {key: 0.0 for key in CONTRIBUTION_KEYS}
    for group in GROUPS:
        label = GROUP_LABEL.get(group, rates_label)
        if label != "residual":
            out[label] += effects[group]
    # Residual closes the books: whatever the named mechanisms do not explain, so the sum is exactly the change.
    out["residual"] = change - sum(v for k, v in out.items() if k != "residual")
    return out


def _model_fit(
    fit: BaselineFit,
    routes: np.ndarray,
    per_route: list[RouteRates],
    base: CallWindow,
    epi: CallWindow,
    synthetic: tuple[float, float],
    rose_share: float,
    dims: list[str],
    pairs: int,
) -> dict[str, object]:
    return {
        "kind": "streaming" if fit.streaming else "non_streaming",
        "target": "ttft_ms" if fit.streaming else "duration_ms",
        **fit.stats,
        "n_baseline": int(fit.n_base.sum()),
        "n_episode": sum(row.n_episode for row in per_route),
        "n_baseline_ok": base.n,
        "n_episode_ok": epi.n,
        "pairs": pairs,
        "slopes_ms_per_token": {c: float(s) for c, s in zip(fit.columns, fit.pooled_slopes, strict=True)},
        "itl_ms": fit.pooled_itl if fit.streaming else None,
        "route_dims": list(dims),
        "routes": [{"route": str(k), **asdict(row)} for k, row in zip(routes, per_route, strict=True)],
        "rates_rose_share": rose_share,
        "cache_imputed_rows": base.cache_imputed + epi.cache_imputed,
        "tokens_imputed_rows": base.tokens_imputed + epi.tokens_imputed,
        "synthetic_baseline": synthetic[0],
        "synthetic_observed": synthetic[1],
    }
