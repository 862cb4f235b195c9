"""Regression detection: per-series episodes over rollups. One contract for detectors, one registry.

:mod:`.episodes` builds the panels, refits baselines daily and computes each bucket's deviation; a detector (see
:mod:`.base` for the contract and the registry; :mod:`.cusum` is the default) turns deviations into episodes.
Series too sparse (or too bursty) for buckets are also tested call by call: :mod:`.per_call_series` picks them,
:mod:`.per_call` tests them.
"""

from spanprism.attribution.detection.base import (
    DETECTORS,
    Detector,
    DetectorConfig,
    DetectorRun,
    Deviations,
    Span,
    create_detector,
    detector_from_dict,
    detector_names,
)

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorConfig",
    "DetectorRun",
    "Deviations",
    "Span",
    "create_detector",
    "detector_from_dict",
    "detector_names",
]
