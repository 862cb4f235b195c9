"""Exact Shapley values over covariate groups, and the synthetic-call game the decomposition plays.

The game: every synthetic call carries a baseline-side and an episode-side value for each group (prompt size,
cache state, output size, route, rates). ``v(S)`` is the metric (e.g. a p95) of the model latency of the synthetic
calls with the groups in ``S`` at episode values and the others at baseline values. Synthetic calls come from a
quantile coupling of the two windows (see :func:`quantile_coupling`), weighted so that the baseline side is exactly
the baseline window and the episode side exactly the episode window: ``v(∅)`` reproduces the baseline metric and
``v(all)`` the observed one, so no resampling noise enters the attribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from spanprism.attribution.decomposition.latency_model import BaselineFit, Residuals, SideParams, design

#: The covariate groups, in the order of the bits of a coalition mask.
GROUPS: tuple[str, ...] = ("prompt_size", "cache_state", "output_size", "route", "rates")


def coalition_values(value: Callable[[int], float], n_players: int) -> np.ndarray:
    """``value`` evaluated once on every coalition bitmask 0 … 2**n − 1."""
    return np.array([value(mask) for mask in range(1 << n_players)], dtype=float)


def shapley_from_values(values: np.ndarray, n_players: int) -> np.ndarray:
    """phi_i = Σ_{S ∌ i} |S|!(n−|S|−1)!/n! · (v(S ∪ {i}) − v(S)); exact, so independent of any player order."""
    weight = [
        math.factorial(k) * math.factorial(n_players - k - 1) / math.factorial(n_players) for k in range(n_players)
    ]
    phi = np.zeros(n_players)
    for mask in range(1 << n_players):
        size = mask.bit_count()
        for i in range(n_players):
            if not mask & (1 << i):
                phi[i] += weight[size] * (values[mask | (1 << i)] - values[mask])
    return phi


def exact_shapley(value: Callable[[int], float], n_players: int) -> np.ndarray:
    """Shapley value of each player; ``value`` takes a coalition bitmask (bit i set = player i in)."""
    return shapley_from_values(coalition_values(value, n_players), n_players)


def quantile_coupling(
    key_base: np.ndarray, key_epi: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair baseline and episode calls by the rank of ``key`` (north-west-corner transport between the two windows).

    Each baseline call carries mass ``n_epi`` and each episode call mass ``n_base`` (integers, so marginals are exact);
    both sides are sorted by key (prompt size: a prompt grows "in place"), seeded random order breaking ties, and the
    overlapping mass intervals become weighted pairs — at most n_base + n_epi − 1 of them.
    Returns (baseline index, episode index, integer weight) per pair.
    """
    n_b, n_e = key_base.size, key_epi.size
    order_b = np.lexsort((rng.permutation(n_b), key_base))
    order_e = np.lexsort((rng.permutation(n_e), key_epi))
    ends_b = n_e * np.arange(1, n_b + 1, dtype=np.int64)
    ends_e = n_b * np.arange(1, n_e + 1, dtype=np.int64)
    cuts = np.union1d(ends_b, ends_e)
    starts = np.concatenate(([0], cuts[:-1]))
    ib = np.searchsorted(ends_b, starts, side="right")
    ie = np.searchsorted(ends_e, starts, side="right")
    return order_b[ib], order_e[ie], cuts - starts


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Inverted-CDF quantile with integer weights: the smallest value whose cumulative weight reaches q·W.

    Exact integer arithmetic, so splitting a call's weight across pairs never changes the answer — this is what
    makes ``v(∅)`` equal the baseline metric bit for bit.
    """
    order = np.argsort(values)  # tie order is irrelevant: tied values are equal
    cum = np.cumsum(weights[order].astype(np.int64))
    frac = Fraction(q).limit_denominator(100_000)
    idx = int(np.searchsorted(cum * frac.denominator, frac.numerator * int(cum[-1]), side="left"))
    return float(values[order][min(idx, values.size - 1)])


@dataclass(frozen=True)
class MetricSpec:
    """What is measured: ``quantity`` in {e2e, ttft, itl}; ``q`` a quantile in (0, 1], or None for the mean."""

    quantity: str
    q: float | None

    def summarize(self, values: np.ndarray, weights: np.ndarray) -> float:
        keep = np.isfinite(values)
        if not np.any(keep):
            return float("nan")
        values, weights = values[keep], weights[keep]
        if self.q is None:
            return float(np.sum(values * weights) / np.sum(weights))
        return weighted_quantile(values, weights, self.q)


@dataclass
class SideValues:
    """One side (baseline or episode) of every synthetic call: its group values and its own residuals."""

    input: np.ndarray
    cached: np.ndarray
    output: np.ndarray
    route: np.ndarray
    noise: Residuals

    def take(self, idx: np.ndarray) -> SideValues:
        noise = Residuals(self.noise.eps[idx], self.noise.m[idx], self.noise.o[idx])
        return SideValues(self.input[idx], self.cached[idx], self.output[idx], self.route[idx], noise)


@dataclass
class LatencyGame:
    """v(S) over the five groups for a fixed set of weighted synthetic calls."""

    fit: BaselineFit
    base: SideValues
    epi: SideValues
    params: tuple[SideParams, SideParams]
    weights: np.ndarray
    metric: MetricSpec

    def latency(self, mask: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first part, decode, output) of every synthetic call for coalition ``mask``."""
        on = [bool(mask & (1 << i)) for i in range(len(GROUPS))]
        b, e = self.base, self.epi
        inp = e.input if on[0] else b.input
        cached = e.cached if on[1] else b.cached
        output = e.output if on[2] else b.output
        route = e.route if on[3] else b.route
        params, noise = (self.params[1], e.noise) if on[4] else (self.params[0], b.noise)
        X = design(self.fit.columns, inp, cached, output)
        first = params.first_part(route, X, self.fit.floor) * noise.factor
        decode = params.itl[route] * np.maximum(output - 1.0, 0.0) * noise.m + noise.o
        return first, decode, output

    def value(self, mask: int) -> float:
        first, decode, output = self.latency(mask)
        if self.metric.quantity == "ttft":
            values = first
        elif self.metric.quantity == "itl":
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(output > 1, decode / (output - 1.0), np.nan)
        else:
            values = first + decode
        return self.metric.summarize(values, self.weights)

    def shapley(self) -> tuple[dict[str, float], float, float]:
        """(Shapley value per group, v(∅), v(all))."""
        values = coalition_values(self.value, len(GROUPS))
        phi = shapley_from_values(values, len(GROUPS))
        return {g: float(p) for g, p in zip(GROUPS, phi, strict=True)}, float(values[0]), float(values[-1])
