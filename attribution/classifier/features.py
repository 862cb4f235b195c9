"""Scale-free features of one regression episode, for the attribution classifier.

Inputs are a :class:`~.decompose.Decomposition` of the episode against its baseline, the two call windows
(:class:`~spanprism.attribution.calls_window.CallWindow`, the ones the decomposition read), and an
:class:`EpisodeContext` (what happened on neighbouring series at the same time).
Every feature is a share, a log ratio, a difference of shares or an indicator, so that a 300 ms chat series and a
20 s agent series with the same mechanism land in the same place. Groups (see :data:`FEATURE_NAMES`):

* **contribution shares** of the decomposition (prefill, cache, contention/rates, routing, output, residual) and the
  relative size of the change;
* **rates**: log ratios of ITL and TTFT, the TTFT/duration residual of the baseline model relative to the baseline
  latency, queue time when server-side spans report it, the part of the span after the last token, and whether the
  slowdown grows with the output length (per-token work) or not (a fixed delay);
* **tokens**: input, uncached, cache-read and output tokens as log ratios *and* as absolute changes divided by the
  baseline prompt (the prompt-growth trap: the cache-read *ratio* falls when prompts grow, cache-read *tokens* do
  not), the cache-read ratio and hit-rate changes. Uncached and cache signals are measured on the *stable* routes
  only (known to the baseline, share not grown): a routing change starts cold on its new route, an eviction or a
  prompt change hits the routes that stayed;
* **routes**: total-variation distance of the mix per route dimension, the share of calls on routes the baseline
  did not know, unseen response models / fingerprints; and, as evidence only (:data:`EVIDENCE_ONLY`), the excess
  miss rate of the routes that grew;
* **prompt keys and gaps**: the share of calls on prompt keys unseen in the baseline, keys per call and per hour,
  and the share of calls whose previous call on the same prompt key and route came more than 5 min / 1 h earlier
  (typical prompt-cache TTLs), before vs during;
* **traffic and context**: own volume change, streaming, the reported metric, and whether other series of the same
  provider/region regressed at the same time;
* **distribution shape** (:mod:`spanprism.attribution.classifier.shape`): whether the per-call ITL/TTFT moved as a whole
  (contention) or split into two speeds (a route move, recorded or not), the decode rate net of the fixed tail, and
  how many route dimensions the convention does not record; as evidence only, how much more the decode speed
  jumps from one call to the next (:mod:`spanprism.attribution.classifier.decode_mix`: two backends in turn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spanprism.attribution.calls_window import CallWindow
from spanprism.attribution.classifier.decode_mix import itl_jump_change
from spanprism.attribution.classifier.shape import (
    REASON_EVIDENCE,
    SHAPE_EVIDENCE,
    SHAPE_FEATURES,
    reason_shape_features,
    shape_features,
    unrecorded_dims,
)
from spanprism.attribution.classifier.windows import gap_shares, new_value_share, route_tv, stable_route_masks
from spanprism.attribution.decomposition.decompose import Decomposition
from spanprism.attribution.vocabulary import CONTRIBUTION_KEYS

#: Typical prompt-cache lifetimes (OpenAI/Anthropic default ~5 min, extended ~1 h).
CACHE_TTLS_S: tuple[float, ...] = (300.0, 3600.0)
_EPS = 1e-9

ROUTE_DIMS = ("region", "server_address", "deployment", "response_model", "system_fingerprint")

FEATURE_NAMES: tuple[str, ...] = (
    *(f"share_{k}" for k in CONTRIBUTION_KEYS),
    "share_rates_group",
    "rates_rose_share",
    "log_change",
    "log_itl_ratio",
    "log_ttft_ratio",
    "residual_shift_rel",
    "log_queue_ratio",
    "tail_share_change",
    "output_elasticity",
    "log_input_ratio",
    "log_uncached_ratio",
    "log_cached_ratio",
    "log_output_ratio",
    "d_input_rel",
    "d_uncached_rel",
    "d_cached_rel",
    "cache_ratio_change",
    "hit_rate_change",
    *(f"tv_{d}" for d in ROUTE_DIMS),
    "tv_max",
    "new_route_share",
    "new_response_model_share",
    "new_fingerprint_share",
    "new_prompt_key_share",
    "single_use_key_change",
    "new_key_repeat_share",
    "gap_5m_change",
    "gap_1h_change",
    "log_volume_ratio",
    "streaming",
    "metric_ttft",
    "metric_itl",
    "peer_regressed_share",
    "peer_regressed",
    *SHAPE_FEATURES,
)


@dataclass(frozen=True)
class EpisodeContext:
    """What happened around the episode: neighbours on the same provider (and region) in the same time range.

    ``peers`` counts the other series of the same provider/region that had traffic; ``peers_regressed`` how many of
    them had a regression overlapping this one. A provider incident slows several of them at once.
    """

    peers: int = 0
    peers_regressed: int = 0

    @property
    def regressed_share(self) -> float:
        return self.peers_regressed / self.peers if self.peers > 0 else 0.0


def context_from_episodes(
    target: tuple[str, str | None, float, float], others: list[tuple[str, str | None, float, float, bool]]
) -> EpisodeContext:
    """Context of ``target = (provider, region, start_s, end_s)`` from ``others`` = one row per *other* series:
    ``(provider, region, start_s, end_s, regressed)``; for a series that did not regress, start/end are ignored.
    Several overlapping rows of one series should be collapsed by the caller. Region None matches any region."""
    provider, region, start, end = target
    peers = regressed = 0
    for p, r, s, e, did in others:
        if p != provider or (region is not None and r is not None and r != region):
            continue
        peers += 1
        regressed += int(did and s < end and e > start)
    return EpisodeContext(peers=peers, peers_regressed=regressed)


def _log_ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or a <= 0 or b <= 0:
        return 0.0
    return float(np.log(a / b))


def _p50(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else None


def _decomposition_features(d: Decomposition) -> dict[str, float]:
    c = d.contributions_ms
    denom = max(sum(abs(v) for v in c.values()), abs(d.change_ms), _EPS)
    out = {f"share_{k}": float(c.get(k, 0.0)) / denom for k in CONTRIBUTION_KEYS}
    out["share_rates_group"] = float(d.group_effects_ms.get("rates", 0.0)) / denom
    out["rates_rose_share"] = float(d.model_fit.get("rates_rose_share", 0.0) or 0.0)
    out["log_change"] = _log_ratio(d.observed_value, d.baseline_value)
    return out


def _evidence_value(d: Decomposition, prefix: str) -> tuple[float | None, float | None]:
    for row in d.evidence:
        if str(row["signal"]).startswith(prefix):
            return row["baseline"], row["observed"]  # type: ignore[return-value]
    return None, None


def _rate_features(d: Decomposition, b: CallWindow, e: CallWindow) -> dict[str, float]:
    streaming = b.streaming and e.streaming
    base_level = _p50(b.ttft) if streaming else _p50(b.duration)
    rb, ro = _evidence_value(d, "ttft_residual" if streaming else "duration_residual")
    shift = (ro - rb) / base_level if rb is not None and ro is not None and base_level else 0.0
    return {
        "log_itl_ratio": _log_ratio(_p50(e.itl), _p50(b.itl)) if streaming else 0.0,
        "log_ttft_ratio": _log_ratio(_p50(e.ttft), _p50(b.ttft)) if streaming else 0.0,
        "residual_shift_rel": float(np.clip(shift, -5.0, 5.0)),
        "log_queue_ratio": _log_ratio(_p50(e.queue), _p50(b.queue)),
        "tail_share_change": (_p50(e.tail_share) or 0.0) - (_p50(b.tail_share) or 0.0) if streaming else 0.0,
        "output_elasticity": _output_elasticity(b, e),
    }


def _output_elasticity(b: CallWindow, e: CallWindow) -> float:
    """Relative slowdown of long-output calls minus that of short-output calls (split at the baseline median).

    Per-token decode work (ITL up, longer outputs at a slower ITL) slows long answers more; a fixed delay
    (queueing, a client-side hook, a longer prefill) slows short answers more, relative to their length.
    """
    if b.n < 4 or e.n < 4:
        return 0.0
    cut = float(np.median(b.output))
    long_b, short_b = _p50(b.duration[b.output > cut]), _p50(b.duration[b.output <= cut])
    long_e, short_e = _p50(e.duration[e.output > cut]), _p50(e.duration[e.output <= cut])
    return _log_ratio(long_e, long_b) - _log_ratio(short_e, short_b)


def _token_features(b: CallWindow, e: CallWindow) -> dict[str, float]:
    """Prompt and output sizes over all calls (the client sends them, whatever the route); cache and uncached tokens
    over the calls on *stable* routes only (routes the baseline knew whose share did not grow), so a cold cache on
    a route that traffic just moved to reads as neither an eviction nor a prefill growth."""
    base_in = max(_mean(b.input), 1.0)
    out = dict.fromkeys(
        (
            "log_uncached_ratio",
            "log_cached_ratio",
            "d_uncached_rel",
            "d_cached_rel",
            "cache_ratio_change",
            "hit_rate_change",
        ),
        0.0,
    )
    out.update(
        {
            "log_input_ratio": _log_ratio(_mean(e.input) + 1, _mean(b.input) + 1),
            "log_output_ratio": _log_ratio(_mean(e.output) + 1, _mean(b.output) + 1),
            "d_input_rel": (_mean(e.input) - _mean(b.input)) / base_in,
        }
    )
    sb, se = stable_route_masks(b, e)
    if np.count_nonzero(sb) < 10 or np.count_nonzero(se) < 10:
        return {k: float(np.clip(v, -10.0, 10.0)) for k, v in out.items()}
    ib, ie = b.input[sb], e.input[se]
    ub, ue = b.uncached[sb], e.uncached[se]
    out["log_uncached_ratio"] = _log_ratio(_mean(ue) + 1, _mean(ub) + 1)
    out["d_uncached_rel"] = (_mean(ue) - _mean(ub)) / max(_mean(ib), 1.0)
    if b.cache_known and e.cache_known:
        cb, ce = b.cached[sb], e.cached[se]
        out["log_cached_ratio"] = _log_ratio(_mean(ce) + 1, _mean(cb) + 1)
        out["d_cached_rel"] = (_mean(ce) - _mean(cb)) / max(_mean(ib), 1.0)
        out["cache_ratio_change"] = _ratio(ce, ie) - _ratio(cb, ib)
        out["hit_rate_change"] = float(np.mean(ce > 0) - np.mean(cb > 0))
    return {k: float(np.clip(v, -10.0, 10.0)) for k, v in out.items()}


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else 0.0


def _ratio(cached: np.ndarray, inp: np.ndarray) -> float:
    total = float(np.sum(inp))
    return float(np.sum(cached)) / total if total > 0 else 0.0


def _route_features(b: CallWindow, e: CallWindow) -> dict[str, float]:
    out = {f"tv_{d}": route_tv(b.routes[d], e.routes[d]) for d in ROUTE_DIMS}
    out["tv_max"] = max(out.values())
    base_share = _shares(b.route_key)
    known = np.array([base_share.get(k, 0.0) >= 0.01 for k in e.route_key], dtype=bool)
    out["new_route_share"] = float(np.mean(~known)) if e.n else 0.0
    out["new_response_model_share"] = new_value_share(b.routes["response_model"], e.routes["response_model"])
    out["new_fingerprint_share"] = new_value_share(b.routes["system_fingerprint"], e.routes["system_fingerprint"])
    out.update(_miss_concentration(b, e, base_share))
    return out


def _shares(keys: np.ndarray) -> dict[str, float]:
    uniq, counts = np.unique(keys, return_counts=True)
    return {str(k): c / keys.size for k, c in zip(uniq, counts, strict=True)} if keys.size else {}


def _miss_concentration(b: CallWindow, e: CallWindow, base_share: dict[str, float]) -> dict[str, float]:
    """Excess miss rate of the routes that grew over the other routes (a routing change starts cold on the new
    route; an eviction hits every route). 0 without cache data or when no route grew."""
    if not (b.cache_known and e.cache_known) or not e.n:
        return {"miss_on_grown_routes": 0.0}
    _, stable = stable_route_masks(b, e)
    grown = ~stable
    if not np.any(grown) or not np.any(stable):
        return {"miss_on_grown_routes": 0.0}
    miss = e.cached <= 0
    return {"miss_on_grown_routes": float(np.mean(miss[grown]) - np.mean(miss[stable]))}


def _single_use(keys: np.ndarray) -> np.ndarray:
    """Per call: is its prompt key used by no other call of the window?"""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return counts[inverse] == 1


def _key_features(b: CallWindow, e: CallWindow) -> dict[str, float]:
    names = ("new_prompt_key_share", "single_use_key_change", "new_key_repeat_share", "gap_5m_change", "gap_1h_change")
    if not (b.has_prompt_key and e.has_prompt_key) or not e.n or not b.n:
        return dict.fromkeys(names, 0.0)
    new = ~np.isin(e.prompt_key, np.unique(b.prompt_key))
    gb, ge = gap_shares(b, e, CACHE_TTLS_S)
    return {
        "new_prompt_key_share": float(np.mean(new)),
        # A prefix that changes on every call (a timestamp at the top) makes single-use keys.
        "single_use_key_change": float(np.mean(_single_use(e.prompt_key)) - np.mean(_single_use(b.prompt_key))),
        # New keys that are reused (a fan-out over prefix variants) vs never reused.
        "new_key_repeat_share": float(np.mean(~_single_use(e.prompt_key)[new])) if np.any(new) else 0.0,
        "gap_5m_change": ge[0] - gb[0],
        "gap_1h_change": ge[1] - gb[1],
    }


def episode_features(
    decomposition: Decomposition, b: CallWindow, e: CallWindow, context: EpisodeContext | None = None
) -> dict[str, float]:
    """All :data:`FEATURE_NAMES` (then :data:`EVIDENCE_ONLY`) for one episode (baseline ``b``, episode ``e``), as
    finite floats."""
    context = context or EpisodeContext()
    metric = decomposition.metric
    feats: dict[str, float] = {}
    feats.update(_decomposition_features(decomposition))
    feats.update(_rate_features(decomposition, b, e))
    feats.update(_token_features(b, e))
    feats.update(_route_features(b, e))
    feats.update(_key_features(b, e))
    feats.update(shape_features(b, e))
    feats.update(reason_shape_features(b, e))
    feats["itl_jump_change"] = itl_jump_change(b, e)
    unrecorded = unrecorded_dims(b, e)
    feats.update({f"unrecorded_{d}": float(d in unrecorded) for d in ROUTE_DIMS})
    feats["log_volume_ratio"] = _log_ratio(e.n / max(e.hours, 1e-3), b.n / max(b.hours, 1e-3)) if b.n else 0.0
    feats["streaming"] = float(b.streaming and e.streaming)
    feats["metric_ttft"] = float(metric.startswith("ttft_"))
    feats["metric_itl"] = float(metric.startswith("itl_"))
    feats["peer_regressed_share"] = context.regressed_share
    feats["peer_regressed"] = float(context.peers_regressed > 0)
    # 9 significant digits: the decomposition's BLAS sums differ in the last bits between runs and processes, and a
    # model trained on the features must come out byte-identical from the same seeds.
    return {
        k: float(f"{np.nan_to_num(feats[k], nan=0.0, posinf=0.0, neginf=0.0):.9g}")
        for k in FEATURE_NAMES + EVIDENCE_ONLY
    }


#: Signals computed with the features and shown as evidence, but not fed to the model: the training simulations hold
#: too few cold-cache route moves to teach a weight, and an untaught weight extrapolates badly.
#: ``unrecorded_<dim>`` = 1 when the series' convention never records that route dimension (NULL on every call of
#: both windows): a move along it cannot show in the mix, which the reason rule and the evidence rows say.
#: :data:`~attribution.classifier.shape.REASON_EVIDENCE` is read by the reason rules (region vs deployment, system vs
#: user prompt growth).
EVIDENCE_ONLY: tuple[str, ...] = (
    "miss_on_grown_routes",
    *SHAPE_EVIDENCE,
    *(f"unrecorded_{d}" for d in ROUTE_DIMS),
    *REASON_EVIDENCE,
    # Call-to-call jump of the decode speed (:mod:`.decode_mix`): read by the route check after the model.
    "itl_jump_change",
)


def feature_vector(features: dict[str, float]) -> np.ndarray:
    """Features in :data:`FEATURE_NAMES` order (missing names are 0)."""
    return np.array([float(features.get(k, 0.0)) for k in FEATURE_NAMES], dtype=float)
