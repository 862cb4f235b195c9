"""The labelled windows of a simulation, cut as the attributor receives them: the training examples' raw material.

For every labelled regression: the episode (the labelled window, trimmed at a seeded random as a detector opens
late and closes early), a baseline (the clean stretch right before it, at least as long and 4 h; or the label
pass's 24 h / 72 h with the series' other regressions cut out), the metric a detector would report and the context
(other series of the same provider and region regressed meanwhile). :func:`as_recorded` makes the copy a sparser
convention would show (route columns and per-call signals NULL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.attribution.classifier.features import EpisodeContext, context_from_episodes
from spanprism.attribution.simulator.simulate import SimulationResult

HOUR_US = 3_600_000_000
#: Shortest baseline handed to the decomposition.
MIN_BASELINE_US = 4 * HOUR_US


def _us(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1_000_000)


@dataclass
class SeriesIndex:
    """The calls of one simulation split by series, each in time order, for fast window slicing."""

    tables: dict[tuple[str, str, str, str], pa.Table] = field(default_factory=dict)
    starts: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict)
    regions: dict[tuple[str, str, str, str], str | None] = field(default_factory=dict)

    @classmethod
    def of(cls, calls: pa.Table) -> SeriesIndex:
        index = cls()
        cols = ("service", "provider", "request_model", "operation")
        ids = pa.Table.from_arrays([calls.column(c) for c in cols], names=list(cols))
        keys = ids.group_by(list(cols)).aggregate([])
        for row in keys.to_pylist():
            key = tuple(row[c] for c in cols)
            mask = pc.and_(
                pc.and_(pc.equal(calls["service"], key[0]), pc.equal(calls["provider"], key[1])),
                pc.and_(pc.equal(calls["request_model"], key[2]), pc.equal(calls["operation"], key[3])),
            )
            table = calls.filter(mask).sort_by([("start_time", "ascending")])
            index.tables[key] = table
            micros = table.column("start_time").cast(pa.timestamp("us")).cast(pa.int64())
            index.starts[key] = np.asarray(micros.to_numpy(zero_copy_only=False))
            counts = pc.value_counts(pc.drop_null(table.column("region"))).to_pylist()
            top = max(counts, key=lambda c: (c["counts"], c["values"])) if counts else None
            index.regions[key] = top["values"] if top else None
        return index

    def window(self, key: tuple[str, str, str, str], lo_us: int, hi_us: int) -> pa.Table:
        starts = self.starts[key]
        i, j = np.searchsorted(starts, lo_us, "left"), np.searchsorted(starts, hi_us, "left")
        return self.tables[key].slice(int(i), int(j - i))


def _series_key(label: dict) -> tuple[str, str, str, str]:
    s = label["series"]
    return (s["service"], s["provider"], s["model"], s["operation"])


def _context(label: dict, labels: list[dict], index: SeriesIndex) -> EpisodeContext:
    """Peers: the other series of the same provider and region; regressed = a labelled regression overlapping."""
    me = _series_key(label)
    lo, hi = _us(label["start"]), _us(label["end"])
    others = []
    for key in index.tables:
        if key == me:
            continue
        hits = [
            x
            for x in labels
            if _series_key(x) == key and x["label"] != "none" and _us(x["start"]) < hi and _us(x["end"]) > lo
        ]
        others.append((key[1], index.regions[key], lo, hi, bool(hits)))
    return context_from_episodes((me[1], index.regions[me], lo, hi), others)


def _metric(label: dict, streaming: bool, rng: np.random.Generator | None) -> str:
    options = [m for m in label.get("expected_metrics") or ["e2e_p95_ms"] if streaming or m.startswith("e2e_")]
    if not options:
        return "e2e_p95_ms"
    return options[int(rng.integers(0, len(options)))] if rng is not None else options[0]


def _windows(label: dict, rng: np.random.Generator | None) -> tuple[int, int, int]:
    """(baseline start, episode start, episode end) in µs. With ``rng``: a late open by up to half the ramp and an
    early close by up to 20% of the window. The baseline is the stretch before the labelled start, at least 4 h."""
    start, end = _us(label["start"]), _us(label["end"])
    lo, hi = start, end
    if rng is not None:
        lo = start + int(rng.uniform(0.0, 0.5) * float(label.get("ramp_s") or 0.0) * 1e6)
        hi = end - int(rng.uniform(0.0, 0.2) * (end - lo))
    return start - max(end - start, MIN_BASELINE_US), lo, hi


@dataclass(frozen=True)
class LabelledWindow:
    """One labelled regression of a simulation, cut into what the attributor receives."""

    label: dict
    baseline: pa.Table
    episode: pa.Table
    metric: str
    context: EpisodeContext


#: The label pass's baseline (``passes.label_pass``): the 24 h before the episode with the series' other regressions
#: cut out, 72 h when that holds fewer than :data:`DETECTOR_MIN_BASELINE_CALLS` calls (sparse series).
DETECTOR_BASELINE_HOURS: tuple[float, ...] = (24.0, 72.0)
DETECTOR_MIN_BASELINE_CALLS = 30


def _detector_baseline(index: SeriesIndex, label: dict, labels: list[dict]) -> pa.Table:
    """The baseline the label pass would hand over: :data:`DETECTOR_BASELINE_HOURS` before the labelled start,
    without the calls of the series' other labelled regressions."""
    key, start = _series_key(label), _us(label["start"])
    others = [
        (_us(x["start"]), _us(x["end"]))
        for x in labels
        if x is not label and x["label"] != "none" and _series_key(x) == key and _us(x["start"]) < start
    ]
    base = index.window(key, start, start)
    for hours in DETECTOR_BASELINE_HOURS:
        lo = start - int(hours * HOUR_US)
        base = index.window(key, lo, start)
        if others and base.num_rows:
            t = np.asarray(base.column("start_time").cast(pa.timestamp("us")).cast(pa.int64()).to_numpy())
            keep = np.ones(t.size, dtype=bool)
            for a, b in others:
                keep &= (t < a) | (t >= b)
            base = base.filter(pa.array(keep))
        if base.num_rows >= DETECTOR_MIN_BASELINE_CALLS:
            break
    return base


def labelled_windows(
    result: SimulationResult, *, jitter_seed: int | None = None, detector_baseline: bool = False
) -> list[LabelledWindow]:
    """Baseline/episode windows, metric and context of every labelled regression (``none`` windows skipped, and
    windows with too few calls to say anything: < 20 baseline or < 10 episode calls). ``jitter_seed`` trims the
    windows and picks the metric at random like a detector would; None keeps the exact labelled window. With
    ``detector_baseline`` the baseline is the label pass's (:func:`_detector_baseline`) instead of the clean
    stretch right before the episode (at least as long as it and 4 h): what a sparse series really offers."""
    rng = np.random.default_rng(np.random.SeedSequence([jitter_seed, 0x5EED])) if jitter_seed is not None else None
    index = SeriesIndex.of(result.calls)
    out = []
    for label in result.labels:
        if label["label"] == "none":
            continue
        key = _series_key(label)
        b0, lo, hi = _windows(label, rng)
        if detector_baseline:
            base = _detector_baseline(index, label, result.labels)
        else:
            base = index.window(key, b0, _us(label["start"]))
        epi = index.window(key, lo, hi)
        if base.num_rows < 20 or epi.num_rows < 10:
            continue
        streaming = bool(pc.any(pc.fill_null(epi.column("streaming"), False)).as_py())
        out.append(
            LabelledWindow(label, base, epi, _metric(label, streaming, rng), _context(label, result.labels, index))
        )
    return out


#: Per route column, the chance that a training copy hides it. What real exports drop (ingest of the bundled
#: conventions): the deployment almost always (only an Azure base URL carries it), the region for providers or
#: conventions without ``cloud.region``, the fingerprint when streaming; the host and response model rarely.
HIDE_CHANCE: dict[str, float] = {
    "deployment": 0.9,
    "region": 0.5,
    "system_fingerprint": 0.5,
    "server_address": 0.15,
    "response_model": 0.1,
}
#: Per-call signals that only some conventions carry: server-side queue time (vLLM spans) and per-chunk timings
#: (chunk events or a TBT attribute; without them ITL is derived from the span and includes its fixed tail).
HIDE_SIGNAL_CHANCE: dict[str, float] = {"queue_ms": 0.9, "itl_ms": 0.3}
#: A streaming window whose median per-call ITL rose by this factor may be reported on ITL by the detector.
ITL_REPORTED_RISE = 1.1


def _null_columns(table: pa.Table, names: Sequence[str]) -> pa.Table:
    for name in names:
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, name, pa.nulls(table.num_rows, table.schema.field(name).type))
    return table


def as_recorded(w: LabelledWindow, rng: np.random.Generator) -> LabelledWindow:
    """A copy of ``w`` as a convention that records less would show it: some route columns and per-call signals
    NULL in both windows, and the metric the detector would likely report (ITL when the per-call ITL rose)."""
    hide = [c for c, p in {**HIDE_CHANCE, **HIDE_SIGNAL_CHANCE}.items() if rng.random() < p]
    base, epi = _null_columns(w.baseline, hide), _null_columns(w.episode, hide)
    metric = w.metric
    if "ttft_ms" in epi.column_names and bool(pc.any(pc.fill_null(epi.column("streaming"), False)).as_py()):
        itl_b, itl_e = _median_itl(base), _median_itl(epi)
        if itl_b > 0 and itl_e >= ITL_REPORTED_RISE * itl_b:
            metric = "itl_p95_ms"
    return LabelledWindow(w.label, base, epi, metric, w.context)


def _median_itl(table: pa.Table) -> float:
    itl = pc.divide(
        pc.subtract(table.column("duration_ms"), table.column("ttft_ms")),
        pc.max_element_wise(pc.subtract(table.column("output_tokens").cast(pa.float64()), 1.0), 1.0),
    )
    value = pc.approximate_median(itl).as_py()
    return float(value) if value is not None else 0.0
