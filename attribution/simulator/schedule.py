"""Place scenario episodes on series: balanced family mix, eligibility, non-overlap and clean-history rules.

See ``scenarios.py`` for the rules. A family with no eligible series is skipped (``simulate`` builds the series
so that every requested family has at least one eligible home). Non-streaming series get each label at least once
whenever the mix leaves room, so every label must be recoverable from tokens and e2e alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from spanprism.attribution.simulator.catalog import SeriesSpec
from spanprism.attribution.simulator.scenarios import (
    FAMILY_SPECS,
    HOUR,
    MIN_GAP_S,
    STRENGTHS,
    Episode,
    Family,
    draw_magnitude,
    eligible,
)

#: Episodes per series per day of post-clean time (one every ~16 h keeps room for the gaps).
EPISODES_PER_DAY = 1.5
_TRIES = 40
#: An incident hits at most this many series (keeps the family mix balanced).
MAX_INCIDENT_SERIES = 3


#: ``usable(series_index, start_s, end_s)``: may an episode occupy this window (e.g. is the series active then)?
Usable = Callable[[int, float, float], bool]


class Calendar:
    """Busy windows per series; answers whether a new window respects the gap rules.

    ``clean_s`` is the clean history every series needs before its first window: one number for all series, or one
    per series (series that start mid-window need their history after their own first call).
    """

    def __init__(self, n: int, clean_s: float | Sequence[float], total_s: float, usable: Usable | None = None) -> None:
        self.busy: list[list[tuple[float, float]]] = [[] for _ in range(n)]
        self.clean = [float(clean_s)] * n if np.isscalar(clean_s) else [float(c) for c in clean_s]  # type: ignore[arg-type]
        self.total_s, self.usable = total_s, usable

    def clean_of(self, i: int) -> float:
        """Earliest start of a window on series ``i``."""
        return self.clean[i]

    def free(self, i: int, start: float, end: float) -> bool:
        if start < self.clean[i] or end > self.total_s:
            return False
        if self.usable is not None and not self.usable(i, start, end):
            return False
        pad_new = max(MIN_GAP_S, end - start)
        for s, e in self.busy[i]:
            pad_old = max(MIN_GAP_S, e - s)
            if start - pad_new < e + MIN_GAP_S and end + MIN_GAP_S > s - pad_old:
                return False
        return True

    def add(self, i: int, start: float, end: float) -> None:
        self.busy[i].append((start, end))


def _duration(rng: np.random.Generator, fam: Family) -> float:
    lo, hi = fam.duration_h
    hours = lo if hi <= lo else float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return round(hours * 60.0) * 60.0


def _onset(rng: np.random.Generator, fam: Family, spec: SeriesSpec, cal: Calendar, dur: float) -> float:
    clean = cal.clean_of(spec.index)
    if fam.name == "none/diurnal_peak":  # centre on the series' daily peak hour of a random post-clean day
        days = np.arange(np.ceil(clean / 86400), np.floor(cal.total_s / 86400) + 1)
        day = float(rng.choice(days)) if days.size else 0.0
        return day * 86400 + spec.peak_hour_utc * HOUR - dur / 2
    return round(float(rng.uniform(clean, cal.total_s - dur)) / 60.0) * 60.0


def _ramp(rng: np.random.Generator, fam: Family, dur: float) -> float:
    if fam.label == "none" or (fam.label == "routing_change" and rng.random() < 0.5):
        return 0.0
    return 0.0 if rng.random() < 0.5 else round(float(rng.uniform(0.2, 0.6)) * dur)


class Scheduler:
    """Builds the episode list for one simulation (deterministic given its generator)."""

    def __init__(
        self,
        rng: np.random.Generator,
        specs: list[SeriesSpec],
        clean_s: float | Sequence[float],
        total_s: float,
        strengths: tuple[str, ...] = STRENGTHS,
        usable: Usable | None = None,
    ) -> None:
        self.rng, self.specs, self.strengths = rng, specs, strengths
        self.cal = Calendar(len(specs), clean_s, total_s, usable)
        self.episodes: list[Episode] = []
        self.nonstream_labels: set[str] = set()

    def _new(self, fam: Family, i: int, start: float, dur: float, mag: float, strength: str, params: dict) -> Episode:
        ep = Episode(
            episode_id="",
            family=fam.name,
            series_index=i,
            start_s=start,
            end_s=start + dur,
            ramp_s=_ramp(self.rng, fam, dur),
            magnitude=mag,
            strength=strength,
            params=params,
        )
        ep.episode_id = f"{int(self.rng.integers(0, 2**63)):016x}"
        self.cal.add(i, start, start + dur)
        self.episodes.append(ep)
        if not self.specs[i].streaming:
            self.nonstream_labels.add(fam.label)
        return ep

    def _candidates(self, fam: Family) -> list[int]:
        ok = [s.index for s in self.specs if eligible(fam, s)]
        count = np.bincount([e.series_index for e in self.episodes], minlength=len(self.specs))
        want_ns = fam.label not in self.nonstream_labels
        self.rng.shuffle(ok)
        return sorted(ok, key=lambda i: (not (want_ns and not self.specs[i].streaming), count[i]))

    def place(self, fam: Family) -> int:
        """Place one episode of ``fam`` (provider incidents: one per affected series); returns labels added."""
        if fam.name == "batch_contention/provider_incident":
            return self._place_incident(fam)
        for i in self._candidates(fam):
            spec = self.specs[i]
            for _ in range(_TRIES):
                dur = _duration(self.rng, fam)
                start = _onset(self.rng, fam, spec, self.cal, dur)
                if self.cal.free(i, start, start + dur):
                    mag, strength, params = draw_magnitude(self.rng, fam, spec, self.strengths)
                    self._new(fam, i, start, dur, mag, strength, params)
                    return 1
        return False

    def _place_incident(self, fam: Family) -> bool:
        """An incident on one provider (and its home region) hits every series there that is free at the time."""
        groups: dict[tuple[str, str | None], list[int]] = {}
        for s in self.specs:
            groups.setdefault((s.provider, s.routes[0].region), []).append(s.index)
        keys = sorted(groups, key=lambda k: (-len(groups[k]), k))
        for key in keys:
            members = groups[key]
            for _ in range(_TRIES):
                dur = _duration(self.rng, fam)
                start = _onset(self.rng, fam, self.specs[members[0]], self.cal, dur)
                hit = [i for i in members if self.cal.free(i, start, start + dur)][:MAX_INCIDENT_SERIES]
                if hit and (len(hit) >= min(2, len(members))):
                    mag, strength, _ = draw_magnitude(self.rng, fam, self.specs[hit[0]], self.strengths)
                    incident = f"incident-{int(self.rng.integers(0, 2**31)):08x}"
                    params = {"incident": incident, "provider": key[0], "region": key[1], "series": len(hit)}
                    for i in hit:
                        self._new(fam, i, start, dur, mag, strength, dict(params))
                    return len(hit)
        return 0


def schedule(
    rng: np.random.Generator,
    specs: list[SeriesSpec],
    families: list[str],
    clean_s: float | Sequence[float],
    total_s: float,
    strengths: tuple[str, ...] = STRENGTHS,
    *,
    usable: Usable | None = None,
    per_day: float = EPISODES_PER_DAY,
) -> list[Episode]:
    """Episodes for all series: families cycled in a seed-shuffled order until the calendar is full.

    ``clean_s`` may be per series; ``usable`` can veto windows (idle hours); ``per_day`` episodes per series and
    post-clean day are aimed at.
    """
    sched = Scheduler(rng, specs, clean_s, total_s, strengths, usable)
    clean_mean = float(clean_s) if np.isscalar(clean_s) else float(np.mean(sched.cal.clean))  # type: ignore[arg-type]
    post_days = max(0.0, (total_s - clean_mean) / 86400.0)
    target = max(len(families), round(len(specs) * post_days * per_day)) if post_days > 0 else 0
    order = list(families)
    rng.shuffle(order)
    placed, misses, k = 0, 0, 0
    while placed < target and misses < len(order):
        fam = FAMILY_SPECS[order[k % len(order)]]
        k += 1
        added = sched.place(fam)
        if added:
            placed, misses = placed + added, 0
        else:
            misses += 1
    sched.episodes.sort(key=lambda e: (e.start_s, e.series_index))
    return sched.episodes


def place_steps(
    rng: np.random.Generator,
    cal: Calendar,
    episodes: list[Episode],
    per_week: float,
    n_series: int,
) -> list[tuple[int, float, float]]:
    """Own-size steps ``(series index, start s, ramp s)``: about ``per_week`` per series and week after its clean
    history, each clear of every episode by the usual gaps (a step inside a cause would blur both ground truths)."""
    for ep in episodes:
        cal.add(ep.series_index, ep.start_s, ep.end_s)
    out = []
    for i in range(n_series):
        weeks = max(0.0, (cal.total_s - cal.clean_of(i)) / (7 * 86400.0))
        for _ in range(int(rng.poisson(per_week * weeks))):
            ramp = 0.0 if rng.random() < 0.5 else round(float(rng.uniform(10.0, 90.0))) * 60.0
            for _ in range(_TRIES):
                start = round(float(rng.uniform(cal.clean_of(i), cal.total_s - 2 * HOUR)) / 60.0) * 60.0
                # The step's labelled window: the ramp plus an hour, so a detector has calls to see it by.
                if cal.free(i, start, start + ramp + HOUR):
                    cal.add(i, start, start + ramp + HOUR)
                    out.append((i, start, ramp))
                    break
    return out
