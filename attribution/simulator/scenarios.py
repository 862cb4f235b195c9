"""Scenario families and their scheduling: which labelled episode happens to which series, when, how strongly.

Every family is one known mechanism injected into the physics (``sim_effects.py`` turns an episode into per-call
changes). The ground truth is the family's ``(label, reason)``; ``magnitude`` is the injected strength on the
family's *driving quantity* (:attr:`Family.driver`), drawn log-uniformly over the family's range: the lower third
of the range is tagged ``subtle``, the upper third ``strong``.

Scheduling rules (documented guarantees): no episode starts before ``clean_days`` of clean history; episodes of a
series never overlap; each episode is preceded by a clean stretch at least as long as itself and at least
:data:`MIN_GAP_S`, and followed by at least :data:`MIN_GAP_S` before the next one, so "before vs during" is always
measurable. Episodes last 1-6 hours (benign diurnal windows 3 h; surges 1-3 h) and end before the simulation does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spanprism.attribution.simulator.catalog import SeriesSpec
from spanprism.attribution.simulator.physics import MODEL_SPEEDS

HOUR = 3600.0
#: Minimum clean time between two episodes of a series.
MIN_GAP_S = 4 * HOUR

STREAM_METRICS = ("ttft_p95_ms", "e2e_p95_ms")


@dataclass(frozen=True)
class Family:
    """A scenario family: ground-truth label/reason, magnitude range, what it drives and what it should move."""

    name: str
    label: str
    reason: str | None
    magnitude: tuple[float, float]
    driver: str
    metrics: tuple[str, ...]
    needs: frozenset[str] = frozenset()
    duration_h: tuple[float, float] = (1.0, 6.0)


def _f(
    name: str,
    label: str,
    reason: str | None,
    mag: tuple[float, float],
    driver: str,
    metrics: tuple[str, ...],
    needs: tuple[str, ...] = (),
    duration_h: tuple[float, float] = (1.0, 6.0),
) -> Family:
    return Family(name, label, reason, mag, driver, metrics, frozenset(needs), duration_h)


_ALL = (
    _f(
        "prefill_growth/user_input_growth",
        "prefill_growth",
        "user_input_growth",
        (0.1, 3.0),
        "user-part prompt tokens x (1 + m), appended after the cached prefix (cache-read tokens stay flat, so the "
        "cache-read ratio falls without any eviction)",
        STREAM_METRICS,
        ("cache",),
    ),
    _f(
        "prefill_growth/system_prompt_growth",
        "prefill_growth",
        "system_prompt_growth",
        (1.0, 4.0),
        "system-prefix tokens x (1 + m) under a new prompt_key version, on a series without prompt caching so the "
        "growth is really prefilled; m is raised, if needed, until the added prefill is >= 25% of the median primary "
        "latency",
        STREAM_METRICS,
        ("no_cache", "prefill_matters"),
    ),
    _f(
        "cache_eviction/prompt_changed",
        "cache_eviction",
        "prompt_changed",
        (0.15, 1.0),
        "share m of calls whose system prefix changes per call (e.g. a timestamp at the top): same prompt size, "
        "no reusable prefix",
        STREAM_METRICS,
        ("cache",),
    ),
    _f(
        "cache_eviction/ttl_expired",
        "cache_eviction",
        "ttl_expired",
        (1.0, 2.0),
        "per-prefix inter-arrival gap x (1 + m), beyond the cache TTL: the series' own rate drops (low-rate series) "
        "or traffic fans out over 1 + m prefix variants",
        STREAM_METRICS,
        ("cache",),
    ),
    _f(
        "cache_eviction/provider_evicted",
        "cache_eviction",
        "provider_evicted",
        (0.3, 3.0),
        "provider cache capacity: effective TTL / (1 + m) and miss hazard 1 - (1 - p0)/(1 + m) at the same prefix "
        "and rate",
        STREAM_METRICS,
        ("cache",),
    ),
    _f(
        "batch_contention/queueing",
        "batch_contention",
        "queueing",
        (0.1, 3.0),
        "added admission queue with mean m x the series' pre-episode median TTFT (ITL x (1 + 0.15 m): a fuller batch)",
        STREAM_METRICS,
    ),
    _f(
        "batch_contention/provider_incident",
        "batch_contention",
        "queueing",
        (0.3, 3.0),
        "one provider/region incident queueing several series at once; per series as batch_contention/queueing",
        STREAM_METRICS,
    ),
    _f(
        "batch_contention/decode_slowdown",
        "batch_contention",
        "decode_slowdown",
        (0.1, 3.0),
        "inter-token latency x (1 + m) (decode batch crowded; memory-bandwidth bound)",
        ("itl_p95_ms", "e2e_p95_ms"),
    ),
    _f(
        "routing_change/region_shift",
        "routing_change",
        "region_shift",
        (0.3, 1.0),
        "traffic share m moved to a farther, slower region whose prompt cache starts cold",
        ("ttft_p95_ms", "e2e_p95_ms"),
        ("regions", "cache"),
    ),
    _f(
        "routing_change/deployment_change",
        "routing_change",
        "deployment_change",
        (0.3, 1.0),
        "traffic share m moved to another deployment (slower capacity, same region, cold cache)",
        ("ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms"),
        ("deployments",),
    ),
    _f(
        "routing_change/model_version_change",
        "routing_change",
        "model_version_change",
        (0.5, 1.0),
        "traffic share m answered by a new response_model snapshot / system_fingerprint with slower prefill and decode",
        ("ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms"),
        ("snapshots",),
    ),
    _f(
        "output_growth",
        "output_growth",
        None,
        (0.1, 3.0),
        "output tokens x (1 + m); TTFT and ITL unchanged",
        ("e2e_p95_ms",),
    ),
    _f(
        "unexplained",
        "unexplained",
        None,
        (0.1, 2.0),
        "constant client-side delay of m x the pre-episode median e2e inside the span after the last chunk (a "
        "synchronous hook); no token, cache, route, queue or ITL change",
        ("e2e_p95_ms",),
    ),
    _f(
        "none/own_traffic_surge",
        "none",
        "own_traffic_surge",
        (2.0, 9.0),
        "own traffic x (1 + m) from new independent users; latency flat (one client is a negligible share of a "
        "provider's batch)",
        (),
        duration_h=(1.0, 3.0),
    ),
    _f(
        "none/small_prompt_growth",
        "none",
        "small_prompt_growth",
        (0.02, 0.05),
        "user-part prompt tokens x (1 + m): too small to move latency",
        (),
    ),
    _f(
        "none/diurnal_peak",
        "none",
        "diurnal_peak",
        (0.0, 0.0),
        "nothing injected: a window centred on the series' normal daily traffic peak",
        (),
        duration_h=(3.0, 3.0),
    ),
)

FAMILY_SPECS: dict[str, Family] = {f.name: f for f in _ALL}
#: name -> (label, reason): the ground truth the evaluation code compares against.
FAMILIES: dict[str, tuple[str, str | None]] = {f.name: (f.label, f.reason) for f in _ALL}


@dataclass
class Episode:
    """One injected (or benign) window on one series."""

    episode_id: str
    family: str
    series_index: int
    start_s: float
    end_s: float
    ramp_s: float
    magnitude: float
    strength: str
    params: dict = field(default_factory=dict)

    def weight(self, t: np.ndarray) -> np.ndarray:
        """Intensity in [0, 1] at times ``t`` (s since simulation start): 0 outside, linear over the ramp, then 1."""
        inside = (t >= self.start_s) & (t < self.end_s)
        ramp = np.clip((t - self.start_s) / self.ramp_s, 0.0, 1.0) if self.ramp_s > 0 else np.ones_like(t)
        return np.where(inside, ramp, 0.0)


def eligible(family: Family, spec: SeriesSpec) -> bool:
    """Can ``family`` be injected into ``spec`` honestly (see ``Family.needs``)?"""
    names = {r.name for r in spec.routes}
    checks = {
        # Caching must be on and matter: a miss of the system prefix costs >= 15% of the median primary latency.
        "cache": spec.cache_saving_ms() >= 0.15 * spec.primary_latency(),
        "no_cache": not spec.cache_enabled,
        # A system prompt growth of at most x4 moves the primary latency by >= 25% (decode does not drown it).
        "prefill_matters": system_growth_floor(spec) <= 3.0,
        "regions": "standby_region" in names,
        "deployments": "standby_deployment" in names,
        "snapshots": "standby_snapshot" in names,
    }
    return all(checks[n] for n in family.needs)


def strength_of(u: float) -> str:
    """Tag of a magnitude drawn at quantile ``u`` of its family's range."""
    return "subtle" if u < 1 / 3 else "moderate" if u < 2 / 3 else "strong"


STRENGTHS = ("subtle", "moderate", "strong")


def draw_magnitude(
    rng: np.random.Generator, family: Family, spec: SeriesSpec, strengths: tuple[str, ...] = STRENGTHS
) -> tuple[float, str, dict]:
    """Magnitude (log-uniform over the family's range, restricted to the allowed strength thirds), strength tag and
    mechanism parameters for one series."""
    lo, hi = family.magnitude
    if hi <= 0:
        return 0.0, "none", {}
    third = STRENGTHS.index(strengths[int(rng.integers(0, len(strengths)))])
    u = min((third + float(rng.random())) / 3.0, 1.0)
    m = lo * (hi / lo) ** u
    params: dict = {}
    if family.name == "cache_eviction/ttl_expired":
        params = ttl_expired_params(spec, u)
        m = params["factor"] - 1.0
    elif family.name == "prefill_growth/system_prompt_growth":
        floor = system_growth_floor(spec)
        if m < floor:
            params = {"raised_from": round(m, 4), "reason": "growth raised so latency moves by >= 25%"}
            m = floor
    return round(m, 4), strength_of(u), params


def ttl_expired_params(spec: SeriesSpec, strength_u: float) -> dict:
    """Pick the ttl_expired mechanism and its factor: a rate drop for low-rate series, a prefix fan-out otherwise.

    The factor brings the per-prefix traffic down to ``target`` calls per TTL, 0.6 (subtle: a Poisson stream then
    still hits ~45% of the time) to 0.1 (strong: ~90% misses); it is at least 2.
    """
    target = 0.6 * (0.1 / 0.6) ** strength_u
    factor = max(2.0, spec.rate * spec.cache_ttl_s / target)
    # Own traffic falling by more than ~12x looks like an outage, not a sparser workload: fan out instead.
    if factor <= 12.0:
        return {"mechanism": "rate_drop", "factor": round(factor, 3), "calls_per_ttl": round(target, 3)}
    return {"mechanism": "fan_out", "factor": float(np.ceil(factor)), "calls_per_ttl": round(target, 3)}


def system_growth_floor(spec: SeriesSpec) -> float:
    """Smallest system-prompt growth that adds >= 25% of the series' median primary latency in prefill."""
    per_token = MODEL_SPEEDS[spec.speed].prefill_ms_per_token * spec.routes[0].prefill_mult
    return 0.25 * spec.primary_latency() / max(per_token * spec.sys_tokens, 1e-9)
