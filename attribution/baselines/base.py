"""The baseline contract, the panel it fits on, and the lazy name → "module:Class" registry.

A baseline answers "what value of this metric is normal for this series at time t, and how far from it is
noise?". Every kind implements two pure steps over a :class:`History` panel (all series at once, vectorized):

- ``_fit(history) -> arrays``: parameters as plain numbers (one row per series, ``ok`` says which rows fitted);
- ``_expected(arrays, timestamps) -> (center, scale)``.

The public methods validate shapes and wrap rows as JSON-able dicts carrying ``kind`` and ``version``, so fitted
parameters are stored as JSON (table ``baselines``) and survive library upgrades; save → load gives the same
answer. Detection feeds log values (ln ms), so centers and scales are in log units: a scale of 0.1 is ≈10 %.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from spanprism.attribution.baselines.robust import MAD_TO_SD, nanmedian, nanmedian_and_quantile
from spanprism.attribution.registry import resolve

DAY_S = 86400
#: |deviation| 90th percentile → MAD under normality (0.6745 / 1.645).
TAIL_TO_MAD = 0.6745 / 1.6449

#: name → "module:Class"; modules are imported only when a baseline is created.
BASELINES: dict[str, str] = {
    "rolling": "spanprism.attribution.baselines.rolling:RollingBaseline",
    "seasonal": "spanprism.attribution.baselines.seasonal:SeasonalBaseline",
}


@dataclass
class History:
    """Bucket values of S series on one regular grid of whole UTC days (NaN = no evaluable value).

    Besides the raw panel it caches per-slot medians (a slot is an hour, or one bucket when the grain is
    coarser) and per-day within-slot deviations, computed once and sliced by :meth:`window`.
    """

    values: np.ndarray  # [S, T] float64
    counts: np.ndarray  # [S, T] calls behind each value
    start_s: int  # epoch seconds of column 0 (a UTC midnight)
    grain_s: int
    keys: tuple[str, ...] = ()
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if DAY_S % self.grain_s or self.start_s % DAY_S:
            raise ValueError("grain must divide a day and the panel must start at a UTC midnight")
        if self.values.ndim != 2 or self.values.shape != self.counts.shape:
            raise ValueError("values and counts must be [series, buckets] arrays of one shape")
        if self.values.shape[1] % self.buckets_per_day:
            raise ValueError("a panel covers whole days")

    @property
    def buckets_per_day(self) -> int:
        return DAY_S // self.grain_s

    @property
    def per_slot(self) -> int:
        """Buckets per slot: a slot is one hour, or one bucket when buckets are longer."""
        return max(1, 3600 // self.grain_s)

    @property
    def slots_per_day(self) -> int:
        return self.buckets_per_day // self.per_slot

    @property
    def days(self) -> int:
        return self.values.shape[1] // self.buckets_per_day

    def timestamps(self) -> np.ndarray:
        """Epoch seconds of each column's bucket start."""
        return self.start_s + self.grain_s * np.arange(self.values.shape[1], dtype=np.int64)

    def _slot_view(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0], self.days, self.slots_per_day, self.per_slot)

    def _compute_slots(self, rows: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v = self._slot_view(self.values[rows])
        med = nanmedian(v, -1)
        valid = np.sum(~np.isnan(v), axis=-1)
        dev = np.abs(v - med[..., None])
        # Slots with < 3 values say little about the spread inside a slot.
        dev = np.where((valid >= 3)[..., None], dev, np.nan)
        flat = dev.reshape(dev.shape[0], self.days, -1)
        # In MAD units, but never below what the 90th percentile of |deviation| implies: bucket statistics of
        # bursty traffic (sessions of long outputs, prompt bursts) have heavier tails than a normal, and a MAD
        # alone then understates exactly the deviations that raise alarms.
        mad, tail = nanmedian_and_quantile(flat, 0.9)
        within = np.fmax(mad, tail * TAIL_TO_MAD)
        return med, valid, within

    def slot_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slot medians [S, D, slots], valid buckets per slot [S, D, slots], within-slot MAD per day [S, D])."""
        if "med" not in self._cache:
            med, valid, within = self._compute_slots(slice(None))
            self._cache.update(med=med, valid=valid, within=within)
        return self._cache["med"], self._cache["valid"], self._cache["within"]

    def mask(self, row: int, col_lo: int, col_hi: int) -> None:
        """Hide buckets [col_lo, col_hi) of one series (an anomaly must not teach the baseline)."""
        self.assign(row, col_lo, col_hi, np.nan)

    def assign(self, row: int, col_lo: int, col_hi: int, values: np.ndarray | float) -> None:
        """Overwrite buckets [col_lo, col_hi) of one series (e.g. give masked buckets back) and refresh caches."""
        self.values[row, col_lo:col_hi] = values
        if "med" in self._cache:
            med, valid, within = self._compute_slots(np.array([row]))
            self._cache["med"][row], self._cache["valid"][row], self._cache["within"][row] = med, valid, within

    def window(self, day_lo: int, day_hi: int) -> History:
        """Days [day_lo, day_hi) as a History sharing this one's arrays and caches."""
        day_lo, day_hi = max(day_lo, 0), min(day_hi, self.days)
        cols = slice(day_lo * self.buckets_per_day, day_hi * self.buckets_per_day)
        sub = History(self.values[:, cols], self.counts[:, cols], self.start_s + day_lo * DAY_S, self.grain_s,
                      self.keys)  # fmt: skip
        med, valid, within = self.slot_stats()
        sub._cache.update(med=med[:, day_lo:day_hi], valid=valid[:, day_lo:day_hi], within=within[:, day_lo:day_hi])
        return sub

    def rows(self, rows: np.ndarray) -> History:
        """The series ``rows`` as a panel of their own, with this one's cached slot statistics of those rows
        (every statistic of a series is computed from its own row alone)."""
        keys = tuple(self.keys[i] for i in rows) if self.keys else ()
        sub = History(self.values[rows], self.counts[rows], self.start_s, self.grain_s, keys)
        if "med" in self._cache:
            sub._cache.update({k: v[rows] for k, v in self._cache.items()})
        return sub

    def typical_count(self) -> np.ndarray:
        """Median calls behind the evaluated buckets of the last day with any [S] (the scale's reference count)."""
        bpd = self.buckets_per_day
        values, counts = self.values.reshape(len(self.values), -1, bpd), self.counts.reshape(len(self.counts), -1, bpd)
        valid = ~np.isnan(values)
        last = np.where(valid.any(axis=2), np.arange(values.shape[1]), -1).max(axis=1)  # last day with data
        rows = np.arange(len(values))
        day_counts = np.where(valid[rows, last], counts[rows, last], np.nan)
        return np.where(last >= 0, nanmedian(day_counts, -1), np.nan)

    def within_sd(self) -> np.ndarray:
        """Bucket-to-bucket noise inside a slot, as a standard deviation [S] (0 when a slot is one bucket)."""
        if self.per_slot < 2:
            return np.zeros(self.values.shape[0])
        b = self.per_slot
        # A slot median includes the bucket itself, shrinking deviations by about sqrt((b-1)/b).
        sd = MAD_TO_SD * nanmedian(self.slot_stats()[2], -1) * math.sqrt(b / (b - 1))
        return np.nan_to_num(sd, nan=0.0)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame | pa.Table, *, grain_s: int, key: str | None = "series_key",
        ts: str = "bucket_start", value: str = "value", count: str = "n_calls",
    ) -> History:  # fmt: skip
        """Build a panel from long rows (one per series and bucket); ``key=None`` means one series."""
        df = frame.to_pandas() if isinstance(frame, pa.Table) else frame
        if df.empty:
            raise ValueError("no history rows")
        secs = _epoch_seconds(df[ts]) // grain_s * grain_s
        keys = np.asarray(df[key].astype(str)) if key else np.zeros(len(df), dtype=object).astype(str)
        uniq, row = np.unique(keys, return_inverse=True)
        start = int(secs.min()) // DAY_S * DAY_S
        days = int(secs.max() - start) // DAY_S + 1
        values = np.full((len(uniq), days * (DAY_S // grain_s)), np.nan)
        counts = np.zeros_like(values)
        col = (np.asarray(secs) - start) // grain_s
        values[row, col] = df[value].to_numpy(dtype=np.float64)
        counts[row, col] = df[count].to_numpy(dtype=np.float64) if count in df else 1.0
        return cls(values, counts, start, grain_s, tuple(str(k) for k in uniq))


@dataclass
class ParamsBatch:
    """Fitted parameters of one baseline kind for S series: named arrays with a leading series axis."""

    kind: str
    version: int
    grain_s: int
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.arrays["ok"])

    def row(self, i: int) -> dict[str, Any]:
        """One series' parameters as plain JSON values (NaN → None)."""
        out: dict[str, Any] = {"kind": self.kind, "version": self.version, "grain_s": self.grain_s}
        for name, arr in self.arrays.items():
            value = arr[i].tolist()
            out[name] = _nan_to_none(value)
        return out

    @classmethod
    def from_rows(cls, rows: list[Mapping[str, Any]]) -> ParamsBatch:
        """Stack rows produced by :meth:`row` (all of one kind, version and grain)."""
        if not rows:
            raise ValueError("no parameter rows")
        head = rows[0]
        meta = ("kind", "version", "grain_s")
        if any(tuple(r[m] for m in meta) != tuple(head[m] for m in meta) for r in rows):
            raise ValueError("rows mix kinds, versions or grains")
        names = [k for k in head if k not in meta]
        arrays = {n: np.array([_none_to_nan(r[n]) for r in rows], dtype=np.float64) for n in names}
        arrays["ok"] = arrays["ok"].astype(bool)
        return cls(str(head["kind"]), int(head["version"]), int(head["grain_s"]), arrays)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _none_to_nan(value: Any) -> Any:
    if isinstance(value, list):
        return [_none_to_nan(v) for v in value]
    return math.nan if value is None else value


class Baseline(ABC):
    """One kind of baseline. Subclasses set ``name``/``version``/``defaults`` and write ``_fit``/``_expected``."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    defaults: ClassVar[dict[str, float]] = {}

    def __init__(self, **options: float) -> None:
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown options {sorted(unknown)}")
        self.options: dict[str, float] = {**self.defaults, **options}

    @abstractmethod
    def _fit(self, history: History) -> dict[str, np.ndarray]:
        """Arrays with leading axis S, including boolean ``ok`` (False: not enough history for this kind)."""

    @abstractmethod
    def _expected(self, arrays: dict[str, np.ndarray], ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Center and scale [S, n] at epoch seconds ``ts`` [n]."""

    def fit_batch(self, history: History) -> ParamsBatch:
        """Fit every series of ``history`` at once."""
        arrays = self._fit(history)
        n = history.values.shape[0]
        if any(a.shape[0] != n for a in arrays.values()) or "ok" not in arrays:
            raise AssertionError(f"{self.name}: _fit must return per-series arrays with 'ok'")
        arrays["ok"] = arrays["ok"].astype(bool)
        arrays["fitted_until"] = np.full(n, float(history.start_s + history.values.shape[1] * history.grain_s))
        return ParamsBatch(self.name, self.version, history.grain_s, arrays)

    def expected_batch(self, params: ParamsBatch, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(center, scale) [S, n] for epoch-second ``timestamps`` [n]; NaN for series that did not fit."""
        if (params.kind, params.version) != (self.name, self.version):
            raise ValueError(f"parameters of {params.kind} v{params.version} given to {self.name} v{self.version}")
        ts = np.asarray(timestamps, dtype=np.int64)
        center, scale = self._expected(params.arrays, ts)
        bad = ~params.arrays["ok"]
        center[bad], scale[bad] = np.nan, np.nan
        return center, scale

    def fit(self, history: pd.DataFrame | pa.Table, *, grain_s: int = 300, value: str = "value",
            count: str = "n_calls", ts: str = "bucket_start") -> dict[str, Any]:  # fmt: skip
        """Fit one series from rows of (``ts``, ``value`` [, ``count``]); returns JSON-able parameters."""
        panel = History.from_frame(history, grain_s=grain_s, key=None, ts=ts, value=value, count=count)
        return self.fit_batch(panel).row(0)

    def expected(self, params: Mapping[str, Any], timestamps: Any) -> tuple[np.ndarray, np.ndarray]:
        """(center, scale) of one series at ``timestamps`` (datetimes, pandas or epoch seconds)."""
        ts = _epoch_seconds(timestamps)
        center, scale = self.expected_batch(ParamsBatch.from_rows([params]), ts)
        return center[0], scale[0]


def _epoch_seconds(timestamps: Any) -> np.ndarray:
    arr = np.asarray(timestamps)
    if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.int64)
    stamps = pd.to_datetime(pd.Series(list(arr)), utc=True)
    # Resolution-independent (pandas 3 defaults to µs, older versions to ns).
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def baseline_names() -> tuple[str, ...]:
    """Every registered baseline kind."""
    return tuple(BASELINES)


def create_baseline(name: str, **options: float) -> Baseline:
    """Instantiate a registered baseline by name (imports its module on first use)."""
    return resolve(BASELINES, name, "baseline")(**options)
