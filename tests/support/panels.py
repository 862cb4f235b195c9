"""Seeded rollup panels for detection tests: bucket statistics of log-normal calls on a diurnal cycle."""

from __future__ import annotations

import numpy as np

from spanprism.attribution.detection.episodes import FAMILIES, FamilyPanel

DAY = 288  # 5-minute buckets per day
START_S = 1_772_409_600  # 2026-03-02 00:00 UTC, a Monday


def lognormal_panel(days: int, *, calls: float = 100.0, seed: int = 0, shift: tuple[int, int, float] | None = None,
                    surge: tuple[int, int, float] | None = None, n_series: int = 1,
                    sigma: float = 0.5) -> FamilyPanel:  # fmt: skip
    """Bucket statistics of log-normal calls (log-sd ``sigma``): each statistic's noise shrinks as 1/√n.

    ``shift=(lo, hi, factor)`` multiplies latency in buckets [lo, hi); ``surge=(lo, hi, factor)`` the calls.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    cycle = np.sin(2 * np.pi * (t % DAY) / DAY)
    n = rng.poisson(np.maximum(calls * (1 + 0.5 * cycle), 0), size=(n_series, len(t))).astype(float)
    if surge:
        n[:, surge[0] : surge[1]] *= surge[2]
    level = np.log(900) + 0.05 * cycle + np.zeros((n_series, 1))
    if shift:
        level[:, shift[0] : shift[1]] += np.log(shift[2])
    sd = sigma / np.sqrt(np.maximum(n, 1))
    stats = {}
    for stat, offset, k in zip(FAMILIES["e2e"], (0.82, 0.0, -0.1), (2.1, 1.25, 1.0), strict=True):
        stats[stat] = np.where(n >= 20, level + offset + k * sd * rng.standard_normal(n.shape), np.nan)
    keys = tuple(f"s{i}" for i in range(n_series))
    return FamilyPanel("e2e", 300, keys, START_S, stats, n)
