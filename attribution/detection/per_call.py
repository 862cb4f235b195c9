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
  standardized residual reaches ``confirm_z`` long-run standard errors (:func:`.per_call_stats.confirmation`,
  recorded as ``confirm_z``). A CUSUM run of correlated calls (a burst, a few sessions of long outputs) that
  averages out over the episode is no change; the test resumes after it and its calls stay in the baseline.
Episodes carry ``grain_s = 0`` (per call), so :func:`~.episodes.prefer_finer` keeps them over overlapping bucket
episodes of the same series and family; ``stats["per_call_cusum"]`` records the statistic, threshold and calls.

Here: the episodes (open, escalate, resolve, accept) and the entry point; the test's arithmetic on arrays (baseline,
residuals, threshold, alarm, onset, confirmation) is in :mod:`.per_call_stats`, its settings in :mod:`.per_call_config`.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from spanprism.attribution.baselines.base import DAY_S
from spanprism.attribution.detection.base import ESCALATED
from spanprism.attribution.detection.episodes import Episode, stable_id
from spanprism.attribution.detection.per_call_config import PerCallConfig
from spanprism.attribution.detection.per_call_stats import (
    CONFIRM,
    Calls,
    Fit,
    confirmation,
    confirmed,
    first_alarm,
    fit_baseline,
    residuals,
    threshold,
)

#: The latency column of each family (ok calls only).
FAMILY_COLUMNS: dict[str, str] = {"e2e": "duration_ms", "ttft": "ttft_ms", "itl": "itl_ms"}
TEST = "per_call_cusum"
TEST_TOKENS = "per_call_cusum_token_adjusted"
_ONSET_S = 300  # onsets are placed on 5-minute boundaries
_WEEK_S = 7 * DAY_S


def _follow(c: Calls, onset: int, alarm: int, base: Fit, horizon_s: float,
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


def _summarize(c: Calls, onset: int, end: int, end_s: float | None, accepted: bool, alarm: tuple[int, float, int],
               base: Fit, h: float, clip: float, escalated_from: float | None = None) -> Episode:  # fmt: skip
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


def _escalation(c: Calls, onset: int, alarm: int, end: int, base: Fit, h: float,
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


def _escalations(c: Calls, first: tuple[int, int, float, int], base: Fit, horizon_s: float, h: float,
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


def detect_series(c: Calls, eval_from_s: float, horizon_s: float, h: float, config: PerCallConfig,
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
        z, r = residuals(c, usable, relearn_s, pos, config)
        hit = first_alarm(z, r, h, config)
        if hit is None:
            break
        onset, alarm = pos + hit[0], pos + hit[1]
        # A slow CUSUM can place the change point days before its alarm; the decision deadline counts from onset.
        onset = max(onset, int(np.searchsorted(c.t, c.t[alarm] - max_lag_s(config))))
        day = c.t[onset] // DAY_S * DAY_S
        base = fit_baseline(c, usable, max(day - config.lookback_days * DAY_S, relearn_s), day, config)
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
                c = Calls(str(key), family, t_all[ok], np.log(values[ok]), tokens[ok] if adjusted else None, test)
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
