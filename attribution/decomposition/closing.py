"""Close a decomposition's books on the regression record: ``Σ contributions_ms = observed − baseline`` of the record.

Why the two changes differ. The record's ``baseline`` and ``observed`` are the detector's: the median, over the
episode's buckets, of each bucket's quantile (``observed``) and of the fitted baseline's forecast for those buckets
(``baseline``: a seasonal or rolling model of up to 28 days, with earlier episodes masked); per-call detection uses
its own subsampled baseline window. The decomposition can only split a change between two sets of *calls*: it
pools the episode's calls and the clean 24 h before the onset and takes the metric's quantile over each pool.
A forecast has no calls to decompose, and a median of bucket quantiles is not a quantile of pooled calls, so no
choice of windows makes the two agree; they differ by a few percent (the demo's 12 regressions: −4 % … +9 %).

What is done. The decomposition says *how the change divides* among mechanisms; the record says *how large the
change is*. When the two changes agree in sign and are within a factor :data:`MAX_RATIO` of each other, every
contribution (``residual`` included) is scaled by ``record change / decomposition change``: shares are kept and the
sum is the record's change. Otherwise the decomposition does not describe the record's change well enough to be
stretched onto it: the named mechanisms keep their milliseconds and ``residual`` (what they leave unexplained)
takes the rest. Either way the caller also gets an evidence row (:func:`split_evidence`) with the decomposition's
own numbers, so a reader can see what the split was computed on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: Scale the split onto the record's change only when the two changes are within this factor of each other.
MAX_RATIO = 2.0
#: What "closes" means for a stored record (its contributions are rounded to 0.001 ms each).
TOLERANCE_MS = 0.01
#: The evidence signal naming the decomposition's own baseline and observed value.
SPLIT_SIGNAL = "decomposed_metric"


def scale_factor(split_change: float, record_change: float) -> float | None:
    """``record / split`` when the split may be stretched onto the record's change (see module docstring), else None."""
    if not (math.isfinite(split_change) and math.isfinite(record_change)) or split_change == 0.0:
        return None
    ratio = record_change / split_change
    return ratio if 1.0 / MAX_RATIO <= ratio <= MAX_RATIO else None


def close_on(contributions: Mapping[str, float], record_change: float) -> dict[str, float]:
    """``contributions`` re-expressed so that they sum to ``record_change`` (scaled, or the gap booked to residual)."""
    out = {k: float(v) for k, v in contributions.items()}
    if not math.isfinite(record_change):
        return out
    split_change = math.fsum(out.values())
    factor = scale_factor(split_change, record_change)
    if factor is not None:
        out = {k: v * factor for k, v in out.items()}
    named = math.fsum(v for k, v in out.items() if k != "residual")
    # Residual always takes the last fraction of a millisecond too, so the sum is the record's change exactly.
    out["residual"] = record_change - named
    return out


def closes(contributions: Mapping[str, float] | None, baseline: float | None, observed: float | None) -> bool:
    """Whether stored contributions sum to ``observed − baseline`` (vacuously true without both values)."""
    if baseline is None or observed is None or not (math.isfinite(baseline) and math.isfinite(observed)):
        return True
    total = math.fsum(float(v) for v in (contributions or {}).values())
    return abs(total - (observed - baseline)) <= TOLERANCE_MS


def split_evidence(split_baseline: float, split_observed: float, record_change: float) -> dict[str, object]:
    """The evidence row saying what the split was computed on and how it was put onto the record's change."""
    factor = scale_factor(split_observed - split_baseline, record_change)
    return {
        "signal": SPLIT_SIGNAL,
        "baseline": round(split_baseline, 3),
        "observed": round(split_observed, 3),
        "closed_by": "scaled" if factor is not None else "residual",
        "scale": None if factor is None else round(factor, 4),
    }
