"""The statistics of the per-call test: baseline fit, standardized residuals, CUSUM threshold, alarm, onset and
confirmation, over one series' calls of one family (:class:`Calls`).

The method is described in :mod:`.per_call`, which assembles episodes from these pieces. Kept apart from it: here
is the arithmetic of the test on arrays (numpy, no episode state); there, when an episode opens, escalates, resolves
or is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spanprism.attribution.baselines.base import DAY_S
from spanprism.attribution.detection.episodes import Episode
from spanprism.attribution.detection.per_call_config import PerCallConfig

#: The stat key of :func:`confirmation` (in ``Episode.stats[test]`` and so in the record's detection evidence).
CONFIRM = "confirm_z"
_SIEGMUND = 1.166  # overshoot correction of the CUSUM boundary for unit-variance increments


def threshold(calls_per_week: np.ndarray | float, config: PerCallConfig, budget: float | None = None) -> np.ndarray:
    """CUSUM threshold ``h`` whose in-control ARL (Siegmund) is calls a week / the false-alarm budget."""
    budget = config.false_alarms_per_week if budget is None else budget
    arl = np.maximum(np.asarray(calls_per_week, dtype=np.float64) / budget, 10.0)
    two_k = 2.0 * config.k
    b = np.log(two_k * config.k * arl + 1.0) / two_k
    for _ in range(20):  # fixed point of (e^{2kb} − 2kb − 1)/(2k²) = ARL
        b = np.log(two_k * config.k * arl + two_k * b + 1.0) / two_k
    return np.maximum(b - _SIEGMUND, 1.0)


@dataclass
class Calls:
    """One series' calls of one family: epoch seconds (sorted), ln latency and ln(1 + input, output tokens)."""

    key: str
    family: str
    t: np.ndarray
    x: np.ndarray
    tokens: np.ndarray | None  # [n, 2]; None: the test is on raw latency
    test: str  # which of the tests (per_call.TEST or TEST_TOKENS): the key of its stats in the episode


@dataclass
class Fit:
    """A day's baseline: centre and robust sd of the (token-adjusted) log latency, the long-run sd of the clipped
    standardized residual, the raw log latencies it was fitted on (for the reported quantiles), token slopes."""

    m: float
    s: float
    zsd: float
    raw: np.ndarray
    beta: np.ndarray
    mean: float = 0.0  # plain mean of the (token-adjusted) log latency, unclipped
    lr_sd: float = 1.0  # its long-run sd: per-call sd times the hour-batch inflation, unclipped and uncapped

    def dev(self, c: Calls, sl: slice, clip: float | None) -> np.ndarray:
        """Robust-standardized residuals of the calls ``sl``, clipped to ±``clip`` (None: unclipped)."""
        x = c.x[sl] if c.tokens is None else c.x[sl] - c.tokens[sl] @ self.beta
        z = (x - self.m) / self.s
        return z if clip is None else np.clip(z, -clip, clip)


def _token_slopes(x: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Least-squares slopes of ln latency on ln tokens, refitted without the residuals beyond 3 robust sd."""
    design = np.column_stack([np.ones(x.size), tokens])
    coef = _solve(design, x)
    resid = x - design @ coef
    center = np.median(resid)
    keep = np.abs(resid - center) <= 3 * 1.4826 * np.median(np.abs(resid - center)) + 1e-9
    if keep.sum() > design.shape[1] * 5:
        coef = _solve(design[keep], x[keep])
    return coef[1:]


def _solve(design: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least squares by the normal equations (3 columns), ridge-stabilized for a constant token column."""
    gram = design.T @ design
    return np.linalg.solve(gram + 1e-6 * np.eye(gram.shape[0]) * max(float(np.trace(gram)), 1.0), design.T @ x)


def fit_baseline(c: Calls, usable: np.ndarray, lo_s: float, hi_s: float, config: PerCallConfig) -> Fit | None:
    """The baseline of the usable calls in [lo_s, hi_s); None when too few.

    The sd of the clipped z is the long-run one (batch means over hours): calls of one hour share a load level
    and a session's token sizes, so n correlated calls carry less than n calls' evidence. Without this the
    false-alarm budget would be spent many times over on bursty series.
    """
    a, b = np.searchsorted(c.t, [lo_s, hi_s])
    window = usable[a:b]
    n = int(np.count_nonzero(window))
    if n < config.min_baseline_calls:
        return None
    # An evenly spread subsample is as good a baseline as all calls and keeps a month of a busy series cheap.
    step = max(1, n // config.max_baseline_calls)
    keep = slice(a, b, step) if n == b - a else np.flatnonzero(window)[::step] + a
    raw, times = c.x[keep], c.t[keep]
    if c.tokens is None:
        beta, vals = np.zeros(2), raw
    else:
        tokens = c.tokens[keep]
        beta = _token_slopes(raw, tokens)
        vals = raw - tokens @ beta
    m = float(np.median(vals))
    s = max(1.4826 * float(np.median(np.abs(vals - m))), config.scale_floor)
    z = np.clip((vals - m) / s, -config.clip, config.clip)
    var = max(float(np.var(z)), 0.09)
    hour = (times // config.batch_s).astype(np.int64)
    hour -= hour[0]  # times are sorted
    sums, counts = np.bincount(hour, weights=z - z.mean()), np.bincount(hour)
    inflation = float(np.clip(np.sum(sums**2) / counts.sum() / var, 1.0, config.max_inflation))
    # The confirmation's yardstick: how far the mean of the raw values wanders hour to hour, tails and all (the
    # clipped, capped variance above is the CUSUM's in-control model, not a measure of how noisy the series is).
    mean = float(np.mean(vals))
    raw_var = max(float(np.var(vals)), config.scale_floor**2)
    raw_sums = np.bincount(hour, weights=vals - mean)
    raw_inflation = max(float(np.sum(raw_sums**2) / counts.sum() / raw_var), 1.0)
    return Fit(m, s, float(np.sqrt(var * inflation)), raw, beta, mean, float(np.sqrt(raw_var * raw_inflation)))


def residuals(c: Calls, usable: np.ndarray, relearn_s: float, pos: int,
               config: PerCallConfig) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Standardized clipped residuals ``z`` and clipped log changes ``r`` of calls ``pos:`` (NaN: no baseline)."""
    t = c.t[pos:]
    z, r = np.full(t.size, np.nan), np.full(t.size, np.nan)
    days = (t // DAY_S).astype(np.int64)
    bounds = np.searchsorted(days, np.unique(days))
    for lo, hi in zip(bounds, [*bounds[1:], t.size], strict=True):
        day = int(days[lo])
        fit = fit_baseline(c, usable, max((day - config.lookback_days) * DAY_S, relearn_s), day * DAY_S, config)
        if fit is not None:
            dev = fit.dev(c, slice(pos + lo, pos + hi), config.clip)
            z[lo:hi], r[lo:hi] = dev / fit.zsd, dev * fit.s
    return z, r


def first_alarm(z: np.ndarray, r: np.ndarray, h: float, config: PerCallConfig) -> tuple[int, int, float, int] | None:
    """(run start, alarm index, statistic, calls in the run) of the first alarm of the CUSUM on ``z``, or None."""
    valid = ~np.isnan(z)
    cum = np.concatenate([[0.0], np.cumsum(np.where(valid, z - config.k, 0.0))])
    low = np.minimum.accumulate(cum)
    stat = cum[1:] - low[1:]
    # Where the running minimum was last reached: the CUSUM run began with the next call.
    start = np.maximum.accumulate(np.where(cum == low, np.arange(cum.size), 0))[1:]
    nvalid = np.concatenate([[0], np.cumsum(valid)])
    rsum = np.concatenate([[0.0], np.cumsum(np.where(valid, r, 0.0))])
    idx = np.arange(z.size)
    n_run = nvalid[idx + 1] - nvalid[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (rsum[idx + 1] - rsum[start]) / n_run
    hit = np.flatnonzero((stat >= h) & (n_run >= config.min_calls) & (mean >= np.log1p(config.min_change_pct / 100)))
    if hit.size == 0:
        return None
    a = int(hit[0])
    return _onset(z, int(start[a]), a, config.k), a, float(stat[a]), int(n_run[a])


def _onset(z: np.ndarray, start: int, alarm: int, k: float) -> int:
    """The change point inside the CUSUM run [start, alarm]: the maximum-likelihood onset for a step of the run's
    mean size (allowance half of it). The run itself starts early when k is small: noise before the step drifts
    it up, so its first call can lie hours before the change on a series of a few calls an hour."""
    seg = np.nan_to_num(z[start : alarm + 1], nan=0.0)
    scored = ~np.isnan(z[start : alarm + 1])
    half = max(k, float(seg[scored].mean()) / 2)
    prefix = np.concatenate([[0.0], np.cumsum(np.where(scored, seg - half, 0.0))])
    j = int(np.argmin(prefix[:-1]))  # the calls from j on carry the largest excess
    return start + j + int(np.argmax(scored[j:]))


def confirmation(c: Calls, onset: int, end: int, base: Fit) -> float:
    """The shift of the episode's mean (token-adjusted, for that test) log latency over all its calls from the
    baseline's, in standard errors of a mean of that many calls under the baseline's long-run (hour-batch) variance
    of the unclipped values.

    The CUSUM alarms on the run of calls with the largest excess; on bursty series (calls of one burst share a load
    level and a session's sizes) and series whose own sizes wander, such runs come and go without any change of the
    series. An episode that is a change holds its shift over the calls it spans; a run that was a burst of correlated
    calls averages out over them. The CUSUM's own in-control model (clipped residuals, capped inflation) cannot tell
    the two apart; this second look, at every call of the episode against the baseline's real hour-to-hour spread,
    can.
    """
    sl = slice(onset, max(end, onset + 1))
    x = c.x[sl] if c.tokens is None else c.x[sl] - c.tokens[sl] @ base.beta
    return float((x.mean() - base.mean) / base.lr_sd * np.sqrt(x.size)) if x.size else 0.0


def confirmed(ep: Episode, config: PerCallConfig) -> bool:
    """Does the episode hold its shift over its calls (:func:`confirmation` ≥ ``config.confirm_z``)?"""
    values = [v[CONFIRM] for v in ep.stats.values() if CONFIRM in v]
    return not values or values[0] >= config.confirm_z
