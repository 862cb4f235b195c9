"""The detector contract, what a detector sees, and the lazy name → "module:Class" registry.

Detection runs in two layers. :mod:`.episodes` owns what every detector shares: the rollup panels, the daily
baseline refits with known episodes masked, and the deviation of each bucket from its baseline. A *detector*
turns those deviations into episodes. It is one module behind this contract:

- a frozen :class:`DetectorConfig` dataclass of plain numbers that round-trips through a dict (JSON);
- a :class:`Detector` subclass naming its ``name``/``version``/``config_class`` and writing ``_start``, which
  returns a :class:`DetectorRun` — the detector's state over one panel (S series × K statistics);
- the run's ``_update(block)`` consumes :class:`Deviations` for consecutive buckets in time order and
  ``spans()`` reports every episode so far (resolved ones, then those still open).

The pass calls ``update`` once per day, then reads ``spans()`` to mask open episodes from the next day's
baselines, so a run must be incremental. Adding a detector is a module plus one line in :data:`DETECTORS`;
``tests/test_detectors.py`` runs every registered detector through the same checks.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from spanprism.attribution.registry import resolve

#: Key of a test's stats that marks an episode opened by a further, larger shift inside an open one (its level, %).
ESCALATED = "escalated_from_pct"

#: name → "module:Class"; modules are imported only when a detector is created.
DETECTORS: dict[str, str] = {
    "cusum": "spanprism.attribution.detection.cusum:CusumDetector",
}


@dataclass
class Span:
    """One episode of one series, in column indexes of the panel."""

    row: int
    onset: int
    alarm: int
    peak: int
    end: int | None  # exclusive; None while open
    accepted: bool = False  # closed because the shift persisted (the new normal), not because it came back
    escalated_from_pct: float | None = None  # opened by a larger shift inside an open episode at this level (%)


@dataclass(frozen=True)
class Deviations:
    """What a detector sees for ``n`` consecutive buckets starting at column ``t0`` (NaN = not evaluated).

    ``r`` is the log change of each statistic from its baseline center, ``sd`` the noise it is judged against
    (the baseline's scale, widened when the bucket holds fewer calls than usual) and ``z = r / sd``. ``counts`` are
    the calls behind each bucket: with ``r`` of the geometric-mean statistic (the mean log latency) they are the
    sufficient statistics of a per-call test on log-latency residuals.
    """

    t0: int
    stats: tuple[str, ...]
    z: np.ndarray  # [S, K, n]
    r: np.ndarray  # [S, K, n]
    sd: np.ndarray  # [S, K, n]
    counts: np.ndarray  # [S, n]

    @property
    def n(self) -> int:
        return self.z.shape[2]


@dataclass(frozen=True)
class DetectorConfig:
    """Options of a detector: plain numbers, a dict in and out (unknown keys are an error)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DetectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown options {sorted(unknown)}")
        return cls(**values)


class DetectorRun(ABC):
    """A detector's state over one panel. ``update`` checks shapes and order; subclasses write ``_update``."""

    def __init__(self, n_series: int, stats: tuple[str, ...]) -> None:
        self.n_series, self.stats = n_series, stats
        self._next_t: int | None = None

    def update(self, block: Deviations) -> None:
        """Consume ``block`` (buckets ``t0 … t0 + n − 1``, after every bucket already seen)."""
        shape = (self.n_series, len(self.stats), block.n)
        if block.stats != self.stats or any(a.shape != shape for a in (block.z, block.r, block.sd)):
            raise ValueError(f"deviations must be [series, stats, buckets] = {shape} of stats {self.stats}")
        if block.counts.shape != (self.n_series, block.n):
            raise ValueError("counts must be [series, buckets]")
        if self._next_t is not None and block.t0 < self._next_t:
            raise ValueError(f"bucket {block.t0} comes before bucket {self._next_t - 1}, already seen")
        self._next_t = block.t0 + block.n
        if block.n:
            self._update(block)

    @abstractmethod
    def _update(self, block: Deviations) -> None:
        """Advance through the buckets of ``block`` in order."""

    @abstractmethod
    def accept_settled(self, t: int, settle_buckets: int) -> None:
        """Close, as accepted at bucket ``t`` (a baseline refit), every episode open ``settle_buckets`` since its
        onset: the lifecycle rule that no episode stays open undecided (DESIGN.md: at most 48 h)."""

    @abstractmethod
    def spans(self) -> list[Span]:
        """Every episode so far: resolved ones, then those still open (``end`` None)."""


class Detector(ABC):
    """One kind of detector: a name, a version, a config; ``start`` opens a run over one panel."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    config_class: ClassVar[type[DetectorConfig]]

    def __init__(self, config: DetectorConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise TypeError(f"{self.name}: give a config or options, not both")
        if config is not None and not isinstance(config, self.config_class):
            raise TypeError(f"{self.name}: config must be a {self.config_class.__name__}")
        self.config = config if config is not None else self.config_class.from_dict(options)

    def start(self, n_series: int, stats: tuple[str, ...], *, grain_s: int) -> DetectorRun:
        """A fresh run over ``n_series`` series and ``stats`` (the first is the primary) at ``grain_s`` buckets."""
        if n_series < 0 or not stats or grain_s <= 0:
            raise ValueError("a run needs n_series ≥ 0, at least one statistic and a positive grain")
        return self._start(n_series, tuple(stats), grain_s)

    @abstractmethod
    def _start(self, n_series: int, stats: tuple[str, ...], grain_s: int) -> DetectorRun: ...

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "version", "config"}``: plain JSON, read back by :func:`detector_from_dict`."""
        return {"name": self.name, "version": self.version, "config": self.config.to_dict()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Detector) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.name, self.version, self.config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def detector_names() -> tuple[str, ...]:
    """Every registered detector."""
    return tuple(DETECTORS)


def create_detector(name: str, **options: Any) -> Detector:
    """Instantiate a registered detector by name (imports its module on first use)."""
    return resolve(DETECTORS, name, "detector")(**options)


def detector_from_dict(values: Mapping[str, Any]) -> Detector:
    """The detector :meth:`Detector.to_dict` described (same name, version and options)."""
    detector = create_detector(str(values["name"]), **dict(values.get("config", {})))
    if int(values.get("version", detector.version)) != detector.version:
        raise ValueError(f"{values['name']} v{values['version']} saved; this is v{detector.version}")
    return detector
