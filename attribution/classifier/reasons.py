"""The reason sub-label of an attribution, read off the episode features by physical rules.

A reason answers "which variant of the mechanism?" and must be checkable by a reader against the evidence rows,
so it is a short rule over named features (:mod:`spanprism.attribution.classifier.features`), not a second model:

* ``cache_eviction`` → ``prompt_changed`` when the prefix changed (calls on prompt keys used once and never reused,
  or most calls on a new prompt key while calls stay dense), ``ttl_expired`` when calls per prompt key and route
  got too sparse to keep the cache warm (more gaps longer than a typical 5-minute TTL), else ``provider_evicted``
  (same prefix, same rate: the provider dropped it);
* ``batch_contention`` → ``decode_slowdown`` when the inter-token latency rose more than TTFT/queue time (streaming),
  or the slowdown grows with the output length (non-streaming: per-token work); else ``queueing``;
* ``routing_change`` → the route dimension whose mix moved most: ``region_shift``, ``deployment_change`` (deployment,
  or the endpoint host alone) or ``model_version_change`` (response model or system fingerprint); a region move
  usually also changes host and fingerprint, so near-ties go to region, then deployment; when no recorded
  dimension moved, the unrecorded one (deployment first: conventions rarely carry it). When the spans carry no
  region, a host move counts as a region move if the hosts that gained traffic answer later at zero tokens (a
  longer network round trip; a same-region deployment changes the per-token rates, not the intercept); when they
  answer sooner (a shorter path cannot slow calls down), the host move counts as a deployment move;
* ``prefill_growth`` → ``system_prompt_growth`` when the shared part grew (a new prompt-key version for most calls,
  the cached prefix carries at least half of the added tokens, or the relative growth falls off towards the largest
  calls: the same tokens added to each), else ``user_input_growth``;
* ``output_growth`` and ``unexplained`` have no reason (None).

The table of which reasons each label has is :data:`spanprism.attribution.vocabulary.REASONS`; this module holds
only the rules that pick one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from spanprism.attribution.vocabulary import Label

#: Added share of calls with a long gap (or none) since the previous call on their prompt key and route.
SPARSE_GAP_SHARE = 0.1
#: Added share of calls on single-use prompt keys that means "the prefix changes per call".
SINGLE_USE_SHARE = 0.1
#: Share of calls on prompt keys the baseline never saw that means "a new prompt version".
NEW_KEY_SHARE = 0.3
#: Output elasticity above which a non-streaming slowdown is per-token work.
DECODE_ELASTICITY = 0.03
#: Margin within which a route dimension counts as tied with a more fundamental one.
ROUTE_TIE = 0.05
#: Largest mix move (total variation) of a recorded route dimension that still counts as "no visible move".
ROUTE_VISIBLE = 0.05
#: Rise (ms) of the token-independent latency of the traffic that moved host above which the move lengthened the
#: network path, i.e. went to another region: endpoints in one region differ by a few ms, neighbouring regions by
#: ~20-40 ms, cross-continent and transatlantic paths by 70-200 ms.
REGION_RTT_MS = 40.0
#: Fall-off of the relative input growth from the middle to the largest calls that means "a fixed-size addition".
PREFIX_TAPER = 0.05


def _eviction(f: Mapping[str, float]) -> str:
    if f["single_use_key_change"] >= SINGLE_USE_SHARE and f["new_key_repeat_share"] < 0.5:
        return "prompt_changed"
    if f["gap_5m_change"] >= SPARSE_GAP_SHARE:
        return "ttl_expired"
    if f["new_prompt_key_share"] >= NEW_KEY_SHARE:
        return "prompt_changed"
    return "provider_evicted"


def _contention(f: Mapping[str, float]) -> str:
    if f["streaming"] >= 0.5:
        ttft_side = max(f["log_ttft_ratio"], f["log_queue_ratio"], f["residual_shift_rel"])
        return "decode_slowdown" if f["log_itl_ratio"] > ttft_side else "queueing"
    if f["log_queue_ratio"] > 0.1:
        return "queueing"
    return "decode_slowdown" if f["output_elasticity"] > DECODE_ELASTICITY else "queueing"


def _routing(f: Mapping[str, float]) -> str:
    scores = {
        "region_shift": f["tv_region"],
        "deployment_change": max(f["tv_deployment"], f["tv_server_address"] - f["tv_region"]),
        "model_version_change": max(f["tv_response_model"], f["tv_system_fingerprint"]),
    }
    rtt = f.get("host_intercept_shift_ms", 0.0)
    if f.get("unrecorded_region", 0.0) >= 0.5 and rtt >= REGION_RTT_MS:
        # No region on the spans, but the new hosts add a fixed delay on every call: a longer network path.
        scores["region_shift"] = f["tv_server_address"]
        scores["deployment_change"] = f["tv_deployment"]
    elif rtt <= -REGION_RTT_MS:
        # The new hosts answer sooner at zero tokens (a shorter path): whatever region moved with them did not
        # cause the slowdown; their per-token rates did, i.e. the deployment behind them.
        scores["region_shift"] = 0.0
        scores["deployment_change"] = max(f["tv_deployment"], f["tv_server_address"])
    top = max(scores.values())
    if top < ROUTE_VISIBLE:
        # No recorded dimension moved: the move went along one the spans do not carry. A deployment (provisioned
        # vs standard capacity behind the same host) is the one conventions almost never record.
        hidden = {
            "deployment_change": f.get("unrecorded_deployment", 0.0),
            "region_shift": f.get("unrecorded_region", 0.0),
            "model_version_change": f.get("unrecorded_system_fingerprint", 0.0),
        }
        unseen = next((name for name, flag in hidden.items() if flag >= 0.5), None)
        if unseen:
            return unseen
    # In priority order, the first dimension within the tie margin of the largest move.
    return next(name for name, v in scores.items() if v >= top - ROUTE_TIE)


def _prefill(f: Mapping[str, float]) -> str:
    grew = f["d_input_rel"]
    if f["new_prompt_key_share"] >= NEW_KEY_SHARE or (grew > 0 and f["d_cached_rel"] >= 0.5 * grew):
        return "system_prompt_growth"
    if grew > 0 and f.get("input_growth_taper", 0.0) > PREFIX_TAPER:
        return "system_prompt_growth"
    return "user_input_growth"


_RULES: dict[Label, Callable[[Mapping[str, float]], str]] = {
    "cache_eviction": _eviction,
    "batch_contention": _contention,
    "routing_change": _routing,
    "prefill_growth": _prefill,
}


def pick_reason(label: str, features: Mapping[str, float]) -> str | None:
    """The reason for ``label`` given the episode ``features`` (None for labels without reasons)."""
    rule = _RULES.get(label)  # type: ignore[call-overload]
    return rule(features) if rule else None
