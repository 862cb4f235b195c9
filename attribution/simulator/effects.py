"""Turn a series' episodes into per-call changes of the physics inputs (what each family actually does).

:class:`CallEffects` holds one neutral value per call (multipliers 1, additions 0, default route/prefix); each
family's applier changes only the quantity its :attr:`scenarios.Family.driver` names, scaled by the episode's
intensity ``w(t)`` (0 outside the window, ramping to 1). Rate-level families (surges, the ttl_expired rate drop)
act on arrivals instead: see :func:`rate_multiplier` and :func:`surge_rate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spanprism.attribution.simulator.catalog import SeriesSpec
from spanprism.attribution.simulator.scenarios import Episode


@dataclass
class CallEffects:
    """Per-call episode effects; arrays of length ``n``. Neutral values mean "no episode"."""

    user_mult: np.ndarray
    sys_mult: np.ndarray
    sys_version: np.ndarray  # 0 = the series' current system prompt version, 1 = the grown one
    variant: np.ndarray  # fan-out prefix variant (0 = the shared prefix)
    unique_prefix: np.ndarray  # bool: prefix changed for this call only
    out_mult: np.ndarray
    ttl_mult: np.ndarray
    miss_extra: np.ndarray  # extra probability the provider has lost the prefix
    queue_rel: np.ndarray  # added mean queue, in units of the pre-episode median TTFT
    itl_mult: np.ndarray
    delay_rel: np.ndarray  # added client delay, in units of the pre-episode median e2e
    route_override: np.ndarray  # route index forced by a routing episode, -1 = none
    episode: np.ndarray  # index into the series' episode list, -1 = none

    @classmethod
    def neutral(cls, n: int) -> CallEffects:
        """No episode at all."""
        ones, zeros = np.ones(n), np.zeros(n)
        return cls(
            ones.copy(),
            ones.copy(),
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.zeros(n, bool),
            ones.copy(),
            ones.copy(),
            zeros.copy(),
            zeros.copy(),
            ones.copy(),
            zeros.copy(),
            np.full(n, -1, np.int64),
            np.full(n, -1, np.int64),
        )


def rate_multiplier(episodes: list[Episode], t: np.ndarray) -> np.ndarray:
    """Multiplier of the series' own arrival rate at times ``t`` (ttl_expired by rate drop)."""
    out = np.ones_like(t)
    for ep in episodes:
        if ep.family == "cache_eviction/ttl_expired" and ep.params.get("mechanism") == "rate_drop":
            out = out / (1.0 + (ep.params["factor"] - 1.0) * ep.weight(t))
    return out


def surge_rate(ep: Episode, t: np.ndarray) -> np.ndarray:
    """Extra-traffic multiplier (of the base rate) of an own-traffic surge."""
    return ep.magnitude * ep.weight(t)


def _route_index(spec: SeriesSpec, name: str) -> int:
    return next(i for i, r in enumerate(spec.routes) if r.name == name)


_ROUTE_TARGET = {
    "routing_change/region_shift": "standby_region",
    "routing_change/deployment_change": "standby_deployment",
    "routing_change/model_version_change": "standby_snapshot",
}


def apply_episode(
    fx: CallEffects, k: int, ep: Episode, spec: SeriesSpec, t: np.ndarray, rng: np.random.Generator
) -> None:
    """Write episode ``k``'s effect into ``fx`` for the calls at times ``t``."""
    w = ep.weight(t)
    inside = w > 0
    fx.episode[inside] = k
    m, fam = ep.magnitude, ep.family
    if fam in ("prefill_growth/user_input_growth", "none/small_prompt_growth"):
        fx.user_mult *= 1.0 + m * w
    elif fam == "prefill_growth/system_prompt_growth":
        # Rollout: a share w of calls already runs the new, longer prompt version.
        new = inside & (rng.random(t.size) < w)
        fx.sys_version[new] = 1
        fx.sys_mult[new] = 1.0 + m
    elif fam == "cache_eviction/prompt_changed":
        fx.unique_prefix |= inside & (rng.random(t.size) < m * w)
    elif fam == "cache_eviction/ttl_expired" and ep.params.get("mechanism") == "fan_out":
        spread = inside & (rng.random(t.size) < w)
        fx.variant[spread] = rng.integers(1, int(ep.params["factor"]) + 1, size=int(spread.sum()))
    elif fam == "cache_eviction/provider_evicted":
        fx.ttl_mult /= 1.0 + m * w
        fx.miss_extra = 1.0 - (1.0 - fx.miss_extra) / (1.0 + m * w)
    elif fam in ("batch_contention/queueing", "batch_contention/provider_incident"):
        fx.queue_rel += m * w
        fx.itl_mult *= 1.0 + 0.15 * m * w
    elif fam == "batch_contention/decode_slowdown":
        fx.itl_mult *= 1.0 + m * w
    elif fam in _ROUTE_TARGET:
        moved = inside & (rng.random(t.size) < m * w)
        fx.route_override[moved] = _route_index(spec, _ROUTE_TARGET[fam])
    elif fam == "output_growth":
        fx.out_mult *= 1.0 + m * w
    elif fam == "unexplained":
        fx.delay_rel += m * w
    # none/own_traffic_surge acts on arrivals, ttl_expired/rate_drop on the rate, none/diurnal_peak does nothing.
