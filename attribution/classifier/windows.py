"""Comparisons between two call windows for the episode features: route-mix distances, stable and moved routes,
and call-gap statistics against cache lifetimes. The windows themselves are
:class:`~spanprism.attribution.calls_window.CallWindow` (built once per regression).
"""

from __future__ import annotations

import math

import numpy as np

from spanprism.attribution.calls_window import CallWindow


def _share_map(values: np.ndarray) -> dict[object, float]:
    uniq, counts = np.unique(values, return_counts=True)
    return dict(zip(uniq.tolist(), (counts / values.size).tolist(), strict=True)) if values.size else {}


def route_tv(base: np.ndarray, epi: np.ndarray) -> float:
    """Total-variation distance between the value mixes of one dimension (0 = same mix, 1 = disjoint)."""
    sb, se = _share_map(base), _share_map(epi)
    if not sb or not se:
        return 0.0
    # fsum: exact whatever the order of the set, which differs between processes (salted str hashes).
    return 0.5 * math.fsum(abs(sb.get(k, 0.0) - se.get(k, 0.0)) for k in set(sb) | set(se))


def new_value_share(base: np.ndarray, epi: np.ndarray) -> float:
    """Share of episode calls whose value never occurs in the baseline (NULL in both is not new)."""
    if not epi.size or not base.size:
        return 0.0
    return float(np.mean(~np.isin(epi, np.unique(base))))


def stable_route_masks(base: CallWindow, epi: CallWindow, grew_by: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Per call of each window: is it on a stable route, i.e. one with ≥ 1% of the baseline's calls whose share
    did not grow by more than ``grew_by``? Calls on new or grown routes are where a routing change lands."""
    sb, se = _share_map(base.route_key), _share_map(epi.route_key)
    stable = {k for k, s in sb.items() if s >= 0.01 and se.get(k, 0.0) <= s + grew_by}
    return np.isin(base.route_key, list(stable)), np.isin(epi.route_key, list(stable))


def _long_gap_share(w: CallWindow, ttl_s: float) -> float:
    """Share of calls whose previous call on the same prompt key and route came more than ``ttl_s`` earlier.

    A call with no earlier call of its key in the window counts as a long gap when it starts more than ``ttl_s``
    after the window's first call, and is censored (left out) otherwise: its previous call may precede the window.
    """
    if w.n < 2:
        return 0.0
    key = np.char.add(w.prompt_key.astype(str), w.route_key.astype(str))
    order = np.lexsort((w.start_s, key))
    k, t = key[order], w.start_s[order]
    first = np.ones(k.size, dtype=bool)
    first[1:] = k[1:] != k[:-1]
    gap = np.empty_like(t)
    gap[1:] = t[1:] - t[:-1]
    since_start = t - w.start_s[0]
    known = ~first | (since_start > ttl_s)
    long_gap = np.where(first, True, gap > ttl_s)
    return float(np.mean(long_gap[known])) if np.any(known) else 0.0


def gap_shares(base: CallWindow, epi: CallWindow, ttls_s: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """Long-gap shares per TTL for the baseline and the episode window."""
    return [_long_gap_share(base, t) for t in ttls_s], [_long_gap_share(epi, t) for t in ttls_s]


def moved_masks(base: np.ndarray, epi: np.ndarray, by: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Where traffic moved along one route dimension: per baseline call, is its value one that lost more than
    ``by`` of the share (every baseline call when none did); per episode call, is its value one that gained more
    than ``by``."""
    sb, se = _share_map(base), _share_map(epi)
    grown = [k for k, s in se.items() if s > sb.get(k, 0.0) + by]
    left = [k for k, s in sb.items() if s > se.get(k, 0.0) + by] or list(sb)
    return np.isin(base, left), np.isin(epi, grown)
