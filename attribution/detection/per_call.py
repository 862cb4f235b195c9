"""Per-call detection for series too sparse for buckets: a one-sided CUSUM on robust log-latency residuals.

The bucket detector (:mod:`spanprism.attribution.detection.episodes`) evaluates a bucket only when it holds
``min_calls`` calls, so a series at 5–50 calls an hour is barely watched. Here every call counts: 150 calls over
12 hours weigh like 150 calls over one hour. Entry point: :func:`detect_calls` (calls in → ``Episode`` objects out).
Series of 60–240 calls an hour whose arrivals come in bursts are tested here too, with the token-adjusted test only:
their hourly buckets wander with each burst and the bucket detector misses hours-long shifts over hundreds of calls;
:func:`.per_call_series.per_call_keys` picks both kinds.

- Residuals. Per series and family, the calls of each UTC day are scored against a baseline fitted on the prior
  ``lookback_days`` (episodes found so far left out): ``z = (ln x − median) / (1.4826·MAD)``, clipped to ±``clip``
  (one slow outlier adds at most ``clip − k``), divided by the clipped residuals' own sd in the baseline window
  (so the test's in-control variance is 1 whatever the shape of the latency distribution).
- Test. Page's CUSUM ``S_i = max(0, S_{i−1} + z_i − k)``, vectorized as ``C_i − min_{j≤i} C_j`` on the cumulative
  sum. The threshold ``h`` is chosen per series from an explicit false-alarm budget per series-week: the
  in-control average run length the budget allows (calls a week / budget), inverted through Siegmund's
  approximation ``ARL0 ≈ (e^{2kb} − 2kb − 1) / (2k²)``, ``b = h + 1.166``. A busier series gets a higher ``h``.
- Episode. It opens where ``S`` first reaches ``h`` with ≥ ``min_calls`` calls in the run and a mean log change over
  the run ≥ ln(1 + ``min_change_pct``/100); its onset is the change point inside the run, floored to 5 minutes,
  and never more than the settle period plus one day before the alarm. It resolves when the mean residual of the
  last ``resolve_calls`` calls drops below ``resolve_z`` (its end is the first call of that calm window), or,
  after ``idle_s`` without a call, when the first ``resolve_calls_after_idle`` calls back are calm (its end is
  then the last call before the idle stretch). Still open ``accept_after_s`` after onset, it is *accepted* at
  the next UTC midnight (or at its alarm, if that came later) and the baseline re-learns from its onset on (so a
  later, further shift is its own episode): every episode is decided within 48 h of its onset by default.
- Confirmation. An episode is kept only when its calls, all of them from onset to end, hold the shift: their mean
  standardized residual reaches ``confirm_z`` long-run standard errors (:func:`confirmation`, recorded as
  ``confirm_z``). A CUSUM run of correlated calls (a burst, a few sessions of long outputs) that averages out over
  the episode is no change; the test resumes after it and its calls stay in the baseline.
Episodes carry ``grain_s = 0`` (per call), so :func:`~.episodes.prefer_finer` keeps them over overlapping bucket
episodes of the same series and family; ``stats["per_call_cusum"]`` records the statistic, threshold and calls.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from spanprism.attribution.baselines.base import DAY_S
from spanprism.attribution.detection.base import ESCALATED
from spanprism.attribution.detection.episodes import Episode, stable_id

#: The latency column of each family (ok calls only).
FAMILY_COLUMNS: dict[str, str] = {"e2e": "duration_ms", "ttft": "ttft_ms", "itl": "itl_ms"}
TEST = "per_call_cusum"
TEST_TOKENS = "per_call_cusum_token_adjusted"
#: The stat key of :func:`confirmation` (in ``Episode.stats[test]`` and so in the record's detection evidence).
CONFIRM = "confirm_z"
_ONSET_S = 300  # onsets are placed on 5-minute boundaries
_SIEGMUND = 1.166  # overshoot correction of the CUSUM boundary for unit-variance increments
_WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class PerCallConfig:
    """Which series are tested per call, and the test's allowance, false-alarm budget and timing."""

    sparse_below: float = 60.0  # typical calls per hourly bucket under which a series is tested per call (0: off)
    bursty_dispersion: float = 1.5  # hourly arrivals this over-dispersed (× Poisson) also test a busier series (0: off)
    bursty_below: float = 240.0  # ... when it typically has fewer calls an hour (its 5-minute buckets are too sparse)
    k: float = 0.25  # allowance per call, in sd of the standardized residual (optimal for a 0.5 sd shift)
    clip: float = 3.0  # residuals are clipped to ±clip robust sd before the CUSUM
    false_alarms_per_week: float = 0.01  # budget per series and family and week (sets h per series)
    min_calls: int = 10  # calls in the CUSUM run behind an alarm
    min_change_pct: float = 10.0  # mean change over the run, below which nothing opens
    min_baseline_calls: int = 40  # a day is scored only against a baseline of at least this many calls
    lookback_days: int = 7
    resolve_calls: int = 20  # calm window: calls whose mean residual must fall below resolve_z
    resolve_z: float = 0.5
    idle_s: int = 4 * 3600  # after this long without a call, ...
    resolve_calls_after_idle: int = 5  # ... this many calls back decide whether the episode is over
    accept_after_s: int = DAY_S  # settle period, as in the bucket detector
    raw_budget_share: float = 0.1  # share of the budget for the raw (not token-adjusted) test
    scale_floor: float = 0.02  # ln units: a floor on the robust sd of a very steady series
    batch_s: int = 3600  # batch length of the long-run variance estimate
    max_inflation: float = 10.0  # cap of the long-run / per-call variance ratio
    max_baseline_calls: int = 1500  # a baseline window is subsampled evenly down to about this many calls
    confirm_z: float = 3.5  # the whole episode's mean shift, in long-run standard errors, an episode must reach


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
class _Calls:
    """One series' calls of one family: epoch seconds (sorted), ln latency and ln(1 + input, output tokens)."""

    key: str
    family: str
    t: np.ndarray
    x: np.ndarray
    tokens: np.ndarray | None  # [n, 2]; None: the test is on raw latency
    test: str = TEST


@dataclass
class _Fit:
    """A day's baseline: centre and robust sd of the (token-adjusted) log latency, the long-run sd of the clipped
    standardized residual, the raw log latencies it was fitted on (for the reported quantiles), token slopes."""

    m: float
    s: float
    zsd: float
    raw: np.ndarray
    beta: np.ndarray
    mean: float = 0.0  # plain mean of the (token-adjusted) log latency, unclipped
    lr_sd: float = 1.0  # its long-run sd: per-call sd times the hour-batch inflation, unclipped and uncapped

    def dev(self, c: _Calls, sl: slice, clip: float | None) -> np.ndarray:
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


def _baseline(c: _Calls, usable: np.ndarray, lo_s: float, hi_s: float, config: PerCallConfig) -> _Fit | None:
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
    return _Fit(m, s, float(np.sqrt(var * inflation)), raw, beta, mean, float(np.sqrt(raw_var * raw_inflation)))


def _residuals(c: _Calls, usable: np.ndarray, relearn_s: float, pos: int,
               config: PerCallConfig) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Standardized clipped residuals ``z`` and clipped log changes ``r`` of calls ``pos:`` (NaN: no baseline)."""
    t = c.t[pos:]
    z, r = np.full(t.size, np.nan), np.full(t.size, np.nan)
    days = (t // DAY_S).astype(np.int64)
    bounds = np.searchsorted(days, np.unique(days))
    for lo, hi in zip(bounds, [*bounds[1:], t.size], strict=True):
        day = int(days[lo])
        fit = _baseline(c, usable, max((day - config.lookback_days) * DAY_S, relearn_s), day * DAY_S, config)
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


def _follow(c: _Calls, onset: int, alarm: int, base: _Fit, horizon_s: float,
            config: PerCallConfig) -> tuple[int, float | None, bool]:  # fmt: skip
    """(end index, end time, accepted) of an episode; end time None while open at ``horizon_s``.

    Accepted at the first UTC midnight a settle period after its onset, or at its alarm when that came later (an
    episode is never decided before it is found; :func:`max_lag_s` keeps that within 48 h of its onset)."""
    accept_s = float(-(-(c.t[onset] + config.accept_after_s) // DAY_S) * DAY_S)
    accept_s = max(accept_s, float(c.t[alarm]) + 1.0)
    w = config.resolve_calls
    z = base.dev(c, slice(alarm + 1, None), config.clip) / base.zsd
    decided: tuple[int, int, float] | None = None  # (index of the deciding call, end index, end time)
    if z.size >= w:
        cum = np.concatenate([[0.0], np.cumsum(z)])
        calm = np.flatnonzero((cum[w:] - cum[:-w]) / w < config.resolve_z)
        if calm.size:
            first = alarm + 1 + int(calm[0])  # the calm window's first call
            decided = (first + w - 1, first, float(c.t[first]))
    # Back from an idle stretch (a quiet night), the first few calls decide alone: a full calm window would reach
    # into the morning's next cause and chain it to this episode. Calm, the episode ended before the idle stretch.
    wb = config.resolve_calls_after_idle
    for i in np.flatnonzero(np.diff(c.t[alarm:]) >= config.idle_s):  # call alarm + 1 + i comes after the gap
        if decided is not None and alarm + i + wb > decided[0]:
            break
        if i + wb <= z.size and float(z[i : i + wb].mean()) < config.resolve_z:
            decided = (alarm + i + wb, alarm + 1 + int(i), float(c.t[alarm + i]) + 1.0)
            break
    if decided is not None and c.t[decided[0]] < accept_s:
        return decided[1], decided[2], False
    if accept_s <= horizon_s:
        return int(np.searchsorted(c.t, accept_s)), accept_s, True
    return c.t.size, None, False


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _summarize(c: _Calls, onset: int, end: int, end_s: float | None, accepted: bool, alarm: tuple[int, float, int],
               base: _Fit, h: float, clip: float, escalated_from: float | None = None) -> Episode:  # fmt: skip
    """The episode record: p95 and p50 of the episode's calls against those of the baseline window
    (``escalated_from``: the level, in %, of the episode this one escalated)."""
    ref, obs = base.raw, c.x[onset:end]
    summary: dict[str, dict[str, float]] = {}
    for q, name in ((0.95, "p95"), (0.5, "p50")):
        b, o = float(np.exp(np.quantile(ref, q))), float(np.exp(np.quantile(obs, q)))
        summary[f"{c.family}_{name}_ms"] = {"baseline": round(b, 3), "observed": round(o, 3),
                                            "change_pct": round(100 * (o / b - 1), 2)}  # fmt: skip
    # Peak: the largest mean change of 10 consecutive calls (fewer when the episode is shorter).
    w = min(10, obs.size)
    roll = np.convolve(base.dev(c, slice(onset, end), clip) * base.s, np.ones(w) / w, mode="valid")
    peak = int(np.argmax(roll))
    for entry in summary.values():
        entry["peak_change_pct"] = round(100 * float(np.expm1(roll[peak])), 2)
    a, stat, n_run = alarm
    summary[c.test] = {"statistic": round(stat, 3), "threshold": round(h, 3), "calls": float(n_run),
                     "episode_calls": float(obs.size),
                     CONFIRM: round(confirmation(c, onset, end, base), 3)}  # fmt: skip
    if escalated_from is not None:
        summary[c.test][ESCALATED] = round(escalated_from, 2)
    metric = max((k for k in summary if k != c.test), key=lambda k: summary[k]["change_pct"])
    top = summary[metric]
    start = _when(c.t[onset] // _ONSET_S * _ONSET_S)
    return Episode(
        id=stable_id(c.key, c.family, start.isoformat(), *([] if c.test == TEST else [c.test])),
        series_key=c.key, family=c.family, metric=metric,
        grain_s=0, start=start, detected_at=_when(float(c.t[a]) + 1e-3), peak_time=_when(float(c.t[onset + peak])),
        end=None if end_s is None else _when(end_s), baseline=top["baseline"], observed=top["observed"],
        change_pct=top["change_pct"], peak_change_pct=top["peak_change_pct"], n_buckets=int(obs.size),
        stats=summary, accepted=accepted,
    )  # fmt: skip


def confirmation(c: _Calls, onset: int, end: int, base: _Fit) -> float:
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


def _escalation(c: _Calls, onset: int, alarm: int, end: int, base: _Fit, h: float,
                config: PerCallConfig) -> tuple[int, int, float, int, float] | None:  # fmt: skip
    """A further, larger shift inside the episode ``[onset, end)``: (onset, alarm, statistic, calls, level %).

    The same CUSUM (same threshold, allowance and minimum change) runs on the calls after the alarm, re-baselined at
    the episode's level: before each call, the mean residual of the episode's calls so far, counted from the last
    ``min_calls`` calls before the alarm (the run's first calls can predate the change when the onset is placed
    early; those just before the alarm carried the excess that raised it)."""
    first = max(onset, alarm + 1 - config.min_calls)
    if end - alarm - 1 < config.min_calls:
        return None
    dev = np.clip(base.dev(c, slice(first, end), None), -2 * config.clip, 2 * config.clip)
    level = (np.cumsum(dev) / np.arange(1, dev.size + 1))[alarm - first : -1]  # mean of the calls before each one
    excess = np.clip(dev[alarm + 1 - first :] - level, -config.clip, config.clip)
    hit = first_alarm(excess / base.zsd, excess * base.s, h, config)
    if hit is None:
        return None
    at = int(hit[0])
    return alarm + 1 + at, alarm + 1 + hit[1], hit[2], hit[3], 100 * float(np.expm1(level[at] * base.s))


def _escalations(c: _Calls, first: tuple[int, int, float, int], base: _Fit, horizon_s: float, h: float,
                 config: PerCallConfig) -> tuple[list[Episode], tuple[int, int, int, float | None, bool]]:  # fmt: skip
    """An episode and the larger shifts that escalate it, each closed where the next one sets in (a regression of
    its own, with its own onset), and the (onset, alarm, end index, end time, accepted) of the last one."""
    onset, alarm, stat, n_run = first
    found: list[Episode] = []
    escalated_from: float | None = None
    while True:
        end, end_s, accepted = _follow(c, onset, alarm, base, horizon_s, config)
        esc = _escalation(c, onset, alarm, max(end, alarm + 1), base, h, config)
        if esc is None:
            break
        cut_s = max(float(c.t[esc[0]] // _ONSET_S * _ONSET_S), float(c.t[onset]) + 1.0)
        found.append(_summarize(c, onset, esc[0], cut_s, False, (alarm, stat, n_run), base, h, config.clip,
                                escalated_from))  # fmt: skip
        onset, alarm, stat, n_run, escalated_from = esc
    found.append(_summarize(c, onset, max(end, alarm + 1), end_s, accepted, (alarm, stat, n_run), base, h,
                            config.clip, escalated_from))  # fmt: skip
    return found, (onset, alarm, end, end_s, accepted)


def max_lag_s(config: PerCallConfig) -> float:
    """The furthest an onset is placed before its alarm: the deadline (settle period plus one day) less two onset
    steps, so an episode accepted at its alarm is still decided within the deadline of its (floored) onset."""
    return float(config.accept_after_s + DAY_S - 2 * _ONSET_S)


def detect_series(c: _Calls, eval_from_s: float, horizon_s: float, h: float, config: PerCallConfig,
                  prior: list[Episode] | None = None) -> list[Episode]:  # fmt: skip
    """Episodes of one series and family from ``eval_from_s`` on (``prior``: earlier episodes, left out)."""
    usable = np.ones(c.t.size, dtype=bool)
    relearn_s = -np.inf
    for ep in prior or []:
        lo = ep.start.timestamp()
        if ep.accepted:
            relearn_s = max(relearn_s, lo)
        else:
            hi = horizon_s if ep.end is None else ep.end.timestamp()
            usable[np.searchsorted(c.t, lo) : np.searchsorted(c.t, hi)] = False
    episodes: list[Episode] = []
    pos = int(np.searchsorted(c.t, eval_from_s))
    while pos < c.t.size:
        z, r = _residuals(c, usable, relearn_s, pos, config)
        hit = first_alarm(z, r, h, config)
        if hit is None:
            break
        onset, alarm = pos + hit[0], pos + hit[1]
        # A slow CUSUM can place the change point days before its alarm; the decision deadline counts from onset.
        onset = max(onset, int(np.searchsorted(c.t, c.t[alarm] - max_lag_s(config))))
        day = c.t[onset] // DAY_S * DAY_S
        base = _baseline(c, usable, max(day - config.lookback_days * DAY_S, relearn_s), day, config)
        if base is None:  # cannot happen (the onset day was scored), but never guess a baseline
            break
        found, (last, alarm, end, end_s, accepted) = _escalations(c, (onset, alarm, hit[2], hit[3]), base, horizon_s,
                                                                  h, config)  # fmt: skip
        kept = [ep for ep in found if confirmed(ep, config)]
        episodes.extend(kept)
        if end_s is None:
            break
        if not kept:  # no change after all: its calls stay in the baseline, the test resumes after them
            pos = max(end, alarm + 1)
            continue
        if accepted:
            relearn_s = float(c.t[last])  # the level of the last escalation is the new normal
        else:
            usable[onset:end] = False
        pos = max(end, alarm + 1)
    return episodes


def detect_calls(calls: pd.DataFrame, *, eval_from_s: float, horizon_s: float, config: PerCallConfig | None = None,
                 prior: list[Episode] | None = None, adjusted_only: Collection[str] = ()) -> list[Episode]:  # fmt: skip
    """Episodes from per-call latencies: ``calls`` has ``series_key``, ``t`` (epoch s) and the family columns.

    Every series and family present is tested; pick the sparse series beforehand (:func:`sparse_keys`). The series
    of ``adjusted_only`` (the bursty ones, :func:`bursty_keys`) get the token-adjusted test alone: their buckets
    hold enough calls for the bucket detector to watch their raw latency, and the raw test on a bursty series
    mostly sees bursts of its own long outputs or prompts (a session's sizes), which are no change.
    """
    config = config or PerCallConfig()
    episodes: list[Episode] = []
    if calls.empty:
        return episodes
    calls = calls.sort_values(["series_key", "t"], kind="stable")
    for key, rows in calls.groupby("series_key", sort=True):
        t_all = rows["t"].to_numpy(dtype=np.float64)
        tokens = np.log1p(np.nan_to_num(rows[["input_tokens", "output_tokens"]].to_numpy(dtype=np.float64,
                                                                                         na_value=np.nan)))  # fmt: skip
        for family, column in FAMILY_COLUMNS.items():
            values = rows[column].to_numpy(dtype=np.float64, na_value=np.nan)
            ok = values > 0
            if ok.sum() < config.min_baseline_calls:
                continue
            mine = [e for e in prior or [] if e.series_key == key and e.family == family]
            found: list[Episode] = []
            for test, adjusted, budget in _tests(config):
                if not adjusted and key in adjusted_only:
                    continue
                c = _Calls(str(key), family, t_all[ok], np.log(values[ok]), tokens[ok] if adjusted else None, test)
                weeks = max((c.t[-1] - c.t[0]) / _WEEK_S, 1 / 7)
                h = float(threshold(c.t.size / weeks, config, budget))
                found.extend(_without_overlap(detect_series(c, eval_from_s, horizon_s, h, config, mine), found))
            episodes.extend(found)
    return episodes


def _without_overlap(new: list[Episode], kept: list[Episode]) -> list[Episode]:
    """``new`` episodes that overlap none of ``kept`` (a raw-test episode adds only what the adjusted test missed;
    the adjusted residual is less noisy, so its onset is the better one)."""
    far = datetime.max.replace(tzinfo=UTC)
    return [e for e in new if not any(k.start < (e.end or far) and (k.end or far) > e.start for k in kept)]


def _tests(config: PerCallConfig) -> list[tuple[str, bool, float]]:
    """(name, token-adjusted, false-alarm budget per week) of the tests run on each series and family.

    The token-adjusted test sees provider-side changes under the series' own prompt/output drift; the raw test,
    with a small share of the budget, still sees large moves the series' own token growth caused.
    """
    raw = config.false_alarms_per_week * config.raw_budget_share
    return [(TEST_TOKENS, True, config.false_alarms_per_week - raw), (TEST, False, raw)]
