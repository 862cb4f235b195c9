"""Baselines: what a metric normally is for a series at a given time. One module per kind, one contract.

See :mod:`spanprism.attribution.baselines.base` for the contract and the registry.
"""

from spanprism.attribution.baselines.base import (
    BASELINES,
    Baseline,
    History,
    ParamsBatch,
    baseline_names,
    create_baseline,
)

__all__ = ["BASELINES", "Baseline", "History", "ParamsBatch", "baseline_names", "create_baseline"]
