"""Regression episodes per series and metric family (e2e, ttft, itl), vectorized across series.

For each family and grain, the rollup statistics (p95, p50 and the geometric mean, in log units) of every series
form one :class:`~attribution.baselines.History` panel. Days are processed in order; at each UTC midnight every
baseline kind is refitted on the history *before* that day, with the buckets of known episodes masked (an
anomaly must not become its own baseline; after ``mask_max_age_s`` a lasting change is given back and becomes
the new normal). The series takes the first kind of ``config.baselines`` that could fit it (seasonal once two
days exist, rolling before). Each bucket's deviation is scaled by the baseline's spread, widened when the bucket
holds fewer calls than usual (sampling noise of a quantile grows as 1/√n) but never narrowed when it holds more,
so an own-traffic surge with unchanged latency does not alarm. ``config.detector`` (the contract is in
:mod:`.base`; CUSUM by default) turns deviations into episodes. Buckets with fewer than ``min_calls`` calls are
never evaluated; each series is evaluated on its finest grain whose typical bucket holds enough calls and also
watched on every coarser grain (:func:`grain_plan`), which sees its quiet hours, its p95 when 5-minute buckets are
too small for one, and sustained shifts too small for one 5-minute quantile; a coarser episode is kept only where
no finer one overlaps it (:func:`prefer_finer`).

The geometric mean is a detection statistic only (the most efficient location estimate for log-normal
latencies); records report the p95 or p50 that moved most.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from spanprism.attribution.baselines import History, ParamsBatch, create_baseline
from spanprism.attribution.baselines.base import DAY_S
from spanprism.attribution.baselines.robust import nanmedian
from spanprism.attribution.detection.base import ESCALATED, Detector, Deviations, Span, create_detector

#: Statistics per family; the first two are reported, all three detect.
FAMILIES: dict[str, tuple[str, ...]] = {
    "e2e": ("e2e_p95_ms", "e2e_p50_ms", "e2e_gmean_ms"),
    "ttft": ("ttft_p95_ms", "ttft_p50_ms", "ttft_gmean_ms"),
    "itl": ("itl_p95_ms", "itl_p50_ms", "itl_gmean_ms"),
}
#: The calls behind each family's statistics (latency stats exclude error calls).
FAMILY_COUNTS: dict[str, str] = {"e2e": "n_ok", "ttft": "n_ttft", "itl": "n_itl"}
REPORTED = 2
#: The test name bucket episodes are recorded under (records.py's default detection evidence).
BUCKET_TEST = "bucket_cusum"


def _default_detector() -> Detector:
    return create_detector("cusum")


@dataclass(frozen=True)
class DetectionConfig:
    """What is evaluated and against which baselines; ``detector`` (and its config) decides what is an episode."""

    grains: tuple[int, ...] = (300, 3600)  # must be rollup grains; the smallest with enough calls is used
    min_calls: int = 20  # calls behind an evaluated bucket; fewer → not evaluated at all
    min_tail_calls: int = 60  # a p95 needs this many calls (≥ 3 above it), else 2-3 slow outliers decide it
    detector: Detector = field(default_factory=_default_detector)  # a registered detector (detection/base.py)
    merge_gap_s: int = 1800  # episodes of one series closer than this form one regression
    lookback_days: int = 28  # history a baseline is fitted on
    mask_max_age_s: int = 2 * DAY_S  # after this an unresolved change is taught to the baseline
    accept_after_s: int = DAY_S  # settle period: an episode open this long is accepted at the next UTC midnight
    baselines: tuple[str, ...] = ("seasonal", "rolling")  # preference order
    families: tuple[str, ...] = ("e2e", "ttft", "itl")
    watch_coarser: bool = True  # also evaluate each series on coarser grains (see grain_plan)
    coarser_unless_full: float = 0.98  # ... unless this share of its primary buckets already holds a p95


@dataclass
class FamilyPanel:
    """Log statistics of one family for the series evaluated at one grain, on a grid of whole days."""

    family: str
    grain_s: int
    keys: tuple[str, ...]
    start_s: int
    stats: dict[str, np.ndarray]  # stat → [S, T] ln(ms), NaN when not evaluable
    counts: np.ndarray  # [S, T]

    @property
    def buckets_per_day(self) -> int:
        return DAY_S // self.grain_s

    def when(self, col: int) -> datetime:
        return datetime.fromtimestamp(self.start_s + col * self.grain_s, UTC)


@dataclass
class Episode:
    """One detected episode of one family of one series (times are UTC datetimes)."""

    id: str
    series_key: str
    family: str
    metric: str
    grain_s: int
    start: datetime
    detected_at: datetime
    peak_time: datetime
    end: datetime | None
    baseline: float
    observed: float
    change_pct: float
    peak_change_pct: float
    n_buckets: int
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    regression_id: str = ""
    accepted: bool = False  # closed as the new normal after the settle period, not because the metric came back

    @property
    def status(self) -> str:
        if self.end is None:
            return "open"
        return "accepted" if self.accepted else "resolved"


def stable_id(*parts: object) -> str:
    """A short deterministic id: the same series, family and onset always give the same id."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def choose_grains(frame: pd.DataFrame, family: str, config: DetectionConfig) -> dict[int, int]:
    """Per series (``sid``), the finest grain whose typical non-empty bucket holds ``min_calls`` calls.

    Series that reach it at no grain get the coarsest one (their sparse buckets are then simply not evaluated).
    """
    count = FAMILY_COUNTS[family]
    active = _active(frame, count)
    typical = active.groupby(["sid", "grain_s"])[count].median().unstack("grain_s")
    grains = [g for g in config.grains if g in typical.columns]
    if not grains:
        return {}
    enough = typical[grains].fillna(0).to_numpy() >= config.min_calls
    pick = np.where(enough.any(axis=1), np.argmax(enough, axis=1), len(grains) - 1)
    return {int(sid): grains[i] for sid, i in zip(typical.index, pick, strict=True)}


def _active(frame: pd.DataFrame, count: str) -> pd.DataFrame:
    """The rows with calls, of only the columns the grain choice reads: filtering every statistic column of a
    month of 5-minute rollups (millions of rows) cost more than all the baselines of a family."""
    counts = frame[count].to_numpy()
    keep = counts > 0
    return pd.DataFrame({"sid": frame["sid"].to_numpy()[keep], "grain_s": frame["grain_s"].to_numpy()[keep],
                         count: counts[keep]})  # fmt: skip


def grain_plan(frame: pd.DataFrame, family: str, config: DetectionConfig) -> dict[int, tuple[list[int], list[int]]]:
    """grain → (series whose primary grain it is, series evaluated there as well), from :func:`choose_grains`.

    Besides its primary (finest adequate) grain, a series is also watched on every coarser grain where some of
    its buckets hold ``min_calls`` calls. That coarser view sees what the primary grain cannot: the quiet hours of
    a diurnal series (its 5-minute buckets fall below ``min_calls`` at night and are never evaluated), the p95 of
    a series whose 5-minute buckets never reach ``min_tail_calls``, and a sustained shift that is small against
    the sampling noise of one 5-minute quantile but clear in an hour of calls.
    """
    chosen = choose_grains(frame, family, config)
    if not config.watch_coarser:
        return {g: ([s for s, c in chosen.items() if c == g], []) for g in sorted(set(chosen.values()))}
    count = FAMILY_COUNTS[family]
    active = _active(frame, count)
    # Series whose every primary-grain bucket already holds enough calls for a p95 gain little from a coarser
    # view, and a month of baselines costs as much per grain (they are fitted on hourly slots): skip them.
    tail_floor = max(config.min_calls, config.min_tail_calls)
    primary_rows = active[active["grain_s"].to_numpy() == active["sid"].map(chosen).to_numpy()]
    full_share = (primary_rows[count] >= tail_floor).groupby(primary_rows["sid"]).mean()
    evaluable = active[active[count] >= config.min_calls].groupby("grain_s")["sid"].unique()
    plan: dict[int, tuple[list[int], list[int]]] = {}
    for grain in config.grains:
        primary = sorted(s for s, c in chosen.items() if c == grain)
        has = set(evaluable.get(grain, np.array([], dtype=np.int64)).tolist())
        extra = sorted(s for s, c in chosen.items()
                       if c < grain and s in has and full_share.get(s, 0.0) < config.coarser_unless_full)  # fmt: skip
        if primary or extra:
            plan[grain] = (primary, extra)
    return plan


def prefer_finer(episodes: list[Episode]) -> list[Episode]:
    """Drop episodes of a coarser grain that overlap one of a finer grain on the same series and family.

    The finer grain dates onset and end more precisely; the coarser one only adds what the finer one missed.
    """
    kept: list[Episode] = []
    far = datetime.max.replace(tzinfo=UTC)
    for ep in sorted(episodes, key=lambda e: e.grain_s):
        end = ep.end or far
        clash = any(k.series_key == ep.series_key and k.family == ep.family and k.grain_s < ep.grain_s
                    and k.start < end and (k.end or far) > ep.start for k in kept)  # fmt: skip
        if not clash:
            kept.append(ep)
    return kept


def build_panel(frame: pd.DataFrame, family: str, grain_s: int, sids: list[int], keys: list[str], start_s: int,
                end_s: int, min_calls: int, min_tail_calls: int | None = None) -> FamilyPanel:  # fmt: skip
    """Dense [series, bucket] arrays from long rollup rows (``sid`` indexes ``keys``; ``bucket_s`` epoch seconds)."""
    sids = sorted(sids)
    lut = np.full(len(keys), -1, dtype=np.int64)
    lut[sids] = np.arange(len(sids))
    # Plain numpy column views and one boolean mask: no per-family DataFrame copies of millions of rows.
    row = lut[frame["sid"].to_numpy()]
    col = (frame["bucket_s"].to_numpy() - start_s) // grain_s
    shape = (len(sids), (end_s - start_s) // grain_s)
    keep = (frame["grain_s"].to_numpy() == grain_s) & (row >= 0) & (col >= 0) & (col < shape[1])
    row, col = row[keep], col[keep]
    counts = np.zeros(shape)
    counts[row, col] = frame[FAMILY_COUNTS[family]].to_numpy(dtype=np.float64)[keep]
    stats: dict[str, np.ndarray] = {}
    for stat in FAMILIES[family]:
        values = np.full(shape, np.nan)
        raw = frame[stat].to_numpy(dtype=np.float64, na_value=np.nan)[keep]
        with np.errstate(invalid="ignore", divide="ignore"):
            values[row, col] = np.where(raw > 0, np.log(raw), np.nan)
        floor = max(min_calls, min_tail_calls or 0) if "_p95_" in stat else min_calls
        values[counts < floor] = np.nan
        stats[stat] = values
    return FamilyPanel(family, grain_s, tuple(keys[i] for i in sids), start_s, stats, counts)


class _Masks:
    """Which buckets of which series are currently hidden from the baselines of one family."""

    def __init__(self, histories: dict[str, History], raw: dict[str, np.ndarray], max_age: int) -> None:
        self.histories, self.raw, self.max_age = histories, raw, max_age
        self.applied: dict[int, list[tuple[int, int]]] = {}

    def update(self, spans: list[Span], now: int) -> None:
        wanted: dict[int, list[tuple[int, int]]] = {}
        for sp in spans:
            if sp.accepted and sp.end is not None and sp.end <= now:
                # Accepted: the shift is the new normal. Its own buckets are given back and everything before
                # its onset is hidden, so the baseline re-learns from the onset on.
                wanted.setdefault(sp.row, []).append((0, sp.onset))
                continue
            hi = min(now, sp.end if sp.end is not None else now)
            lo = max(sp.onset, hi - self.max_age)
            if hi > lo:
                wanted.setdefault(sp.row, []).append((lo, hi))
        for row in set(wanted) | set(self.applied):
            want = sorted(wanted.get(row, []))
            if want == self.applied.get(row, []):
                continue
            for lo, hi in self.applied.get(row, []):
                for stat, hist in self.histories.items():
                    hist.assign(row, lo, hi, self.raw[stat][row, lo:hi])
            for lo, hi in want:
                for hist in self.histories.values():
                    hist.mask(row, lo, hi)
            self.applied[row] = want


def _fit_day(hist: History, day: int, ts: np.ndarray, config: DetectionConfig
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[ParamsBatch]]:  # fmt: skip
    """Fit every baseline kind on history before ``day``; per series take the first that fitted."""
    window = hist.window(day - config.lookback_days, day)
    n = hist.values.shape[0]
    center, scale, nref = np.full((n, len(ts)), np.nan), np.full((n, len(ts)), np.nan), np.full(n, np.nan)
    fitted: list[ParamsBatch] = []
    todo = np.ones(n, dtype=bool)
    for i, kind in enumerate(config.baselines):
        baseline = create_baseline(kind)
        # Every kind fits each series on its own row alone, so a later kind is fitted only on the series no
        # earlier kind could fit (after the first days that is a handful: the rolling fallback cost as much as
        # the seasonal fit of every series).
        # (With none left, one row still gives the batch its arrays; it is not taken: ``todo`` is empty.)
        rows = None if i == 0 else (np.flatnonzero(todo) if todo.any() else np.arange(min(n, 1)))
        params = baseline.fit_batch(window if rows is None else window.rows(rows))
        c, s = baseline.expected_batch(params, ts)
        if rows is not None:
            until = float(window.start_s + window.values.shape[1] * window.grain_s)
            params, c, s = _spread(params, rows, n, until), _spread_rows(c, rows, n), _spread_rows(s, rows, n)
        take = todo & params.arrays["ok"]
        center[take], scale[take], nref[take] = c[take], s[take], params.arrays["n_ref"][take]
        todo &= ~take
        params.arrays["ok"] = params.arrays["ok"] & take  # the stored choice: exactly one kind per series
        fitted.append(params)
    return center, scale, nref, fitted


def _spread_rows(a: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """``a`` [len(rows), ...] placed at ``rows`` of an [n, ...] array (NaN, or False for booleans, elsewhere)."""
    out = np.zeros((n, *a.shape[1:]), dtype=bool) if a.dtype == bool else np.full((n, *a.shape[1:]), np.nan)
    out[rows] = a
    return out


def _spread(params: ParamsBatch, rows: np.ndarray, n: int, until: float) -> ParamsBatch:
    """Parameters fitted on ``rows`` as a batch over all ``n`` series (the others not ``ok``)."""
    arrays = {k: _spread_rows(v, rows, n) for k, v in params.arrays.items()}
    arrays["fitted_until"][:] = until  # one value for every series, as fit_batch sets it
    return ParamsBatch(params.kind, params.version, params.grain_s, arrays)


def detect_family(panel: FamilyPanel, config: DetectionConfig, *, eval_from_col: int,
                  prior: list[Span] | None = None) -> tuple[list[Episode], dict[str, list[ParamsBatch]]]:  # fmt: skip
    """Episodes of one family panel for buckets from ``eval_from_col`` on, and the last fitted baselines.

    ``prior`` are episodes found by earlier runs (before ``eval_from_col``), masked from the baselines.
    """
    stats = FAMILIES[panel.family]
    n, total = panel.counts.shape
    histories = {s: History(panel.stats[s].copy(), panel.counts, panel.start_s, panel.grain_s, panel.keys)
                 for s in stats}  # fmt: skip
    masks = _Masks(histories, panel.stats, config.mask_max_age_s // panel.grain_s)
    run = config.detector.start(n, stats, grain_s=panel.grain_s)
    centers = {s: np.full((n, total), np.nan, dtype=np.float32) for s in stats[:REPORTED]}
    last: dict[str, list[ParamsBatch]] = {}
    bpd = panel.buckets_per_day
    ts_all = panel.start_s + panel.grain_s * np.arange(total, dtype=np.int64)
    for day in range(eval_from_col // bpd, total // bpd):
        c0, c1 = day * bpd, (day + 1) * bpd
        run.accept_settled(c0, config.accept_after_s // panel.grain_s)
        masks.update([*(prior or []), *run.spans()], c0)
        z = np.full((n, len(stats), bpd), np.nan)
        r, sd = np.full_like(z, np.nan), np.full_like(z, np.nan)
        for k, stat in enumerate(stats):
            center, scale, nref, last[stat] = _fit_day(histories[stat], day, ts_all[c0:c1], config)
            with np.errstate(invalid="ignore", divide="ignore"):
                widen = np.sqrt(np.maximum(1.0, nref[:, None] / panel.counts[:, c0:c1]))
            r[:, k] = panel.stats[stat][:, c0:c1] - center
            sd[:, k] = scale * widen
            z[:, k] = r[:, k] / sd[:, k]
            if stat in centers:
                centers[stat][:, c0:c1] = center
        lo = max(c0, eval_from_col) - c0
        run.update(Deviations(c0 + lo, stats, z[:, :, lo:], r[:, :, lo:], sd[:, :, lo:], panel.counts[:, c0 + lo : c1]))
    episodes = [_summarize(panel, sp, centers, total) for sp in run.spans()]
    return episodes, last


def _summarize(panel: FamilyPanel, sp: Span, centers: dict[str, np.ndarray], total: int) -> Episode:
    hi = sp.end if sp.end is not None else total
    summary: dict[str, dict[str, float]] = {}
    for stat, center in centers.items():
        obs = panel.stats[stat][sp.row, sp.onset : hi]
        base = center[sp.row, sp.onset : hi].astype(np.float64)
        ok = ~np.isnan(obs) & ~np.isnan(base)
        if not ok.any():
            continue
        o, b = float(np.exp(nanmedian(obs[ok]))), float(np.exp(nanmedian(base[ok])))
        summary[stat] = {"baseline": round(b, 3), "observed": round(o, 3), "change_pct": round(100 * (o / b - 1), 2),
                         "peak_change_pct": round(100 * float(np.expm1(np.max(obs[ok] - base[ok]))), 2)}  # fmt: skip
    metric = max(summary, key=lambda s: summary[s]["change_pct"]) if summary else FAMILIES[panel.family][0]
    top = summary.get(metric, {})
    if sp.escalated_from_pct is not None:  # opened by a larger shift inside an open episode: its own regression
        summary[BUCKET_TEST] = {ESCALATED: sp.escalated_from_pct, "grain_s": float(panel.grain_s),
                                "buckets": float(hi - sp.onset)}  # fmt: skip
    key = panel.keys[sp.row]
    start = panel.when(sp.onset)
    return Episode(
        id=stable_id(key, panel.family, start.isoformat()), series_key=key, family=panel.family, metric=metric,
        grain_s=panel.grain_s, start=start, detected_at=panel.when(sp.alarm + 1), peak_time=panel.when(sp.peak),
        end=None if sp.end is None else panel.when(sp.end), baseline=top.get("baseline", float("nan")),
        observed=top.get("observed", float("nan")), change_pct=top.get("change_pct", float("nan")),
        peak_change_pct=top.get("peak_change_pct", float("nan")), n_buckets=hi - sp.onset, stats=summary,
        accepted=sp.accepted,
    )  # fmt: skip


def spans_from_episodes(panel: FamilyPanel, episodes: list[Episode]) -> list[Span]:
    """Earlier episodes of this panel's series as column spans (to mask them from the baselines)."""
    index = {k: i for i, k in enumerate(panel.keys)}
    spans = []
    for ep in episodes:
        if ep.series_key in index and ep.family == panel.family:
            onset = int(ep.start.timestamp() - panel.start_s) // panel.grain_s
            end = None if ep.end is None else int(ep.end.timestamp() - panel.start_s) // panel.grain_s
            spans.append(Span(index[ep.series_key], onset, onset, onset, end, accepted=ep.accepted))
    return spans
