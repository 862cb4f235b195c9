"""Two decode speeds between neighbouring calls: the per-call trace a route move leaves and contention does not.

Contention (a fuller decode batch, an admission queue, a provider incident) slows every call in flight at the same
moment alike: calls close in time keep about the same inter-token latency, whatever the slowdown's size or ramp. A
route move (another deployment, region or model snapshot) sends each call to one of two backends: as long as only a
share of the traffic moved, calls next to each other in time alternate between the old decode speed and the new
one, so the jump of log ITL from one call to the next grows by about the log ratio of the two speeds. That holds
whether or not the convention records the route, so it reads a hidden move where the route mix cannot.

:func:`itl_jump_change` measures it (an evidence-only feature, :data:`.features.EVIDENCE_ONLY`); the check that
uses it is :func:`.rate_checks.route_mixed`.
"""

from __future__ import annotations

import numpy as np

from spanprism.attribution.calls_window import CallWindow

#: Fewest calls with a measured ITL on each side (as :data:`.shape.MIN_CALLS`): fewer neighbours say nothing.
MIN_CALLS = 12
#: Upper quartile of the jumps: a moved share s leaves a jump in 2s(1 - s) of neighbouring pairs (up to one half),
#: which the upper quartile sees once s is between ~0.15 and ~0.85; the median would need more than half.
JUMP_QUANTILE = 0.75


def _jumps(w: CallWindow) -> float | None:
    """Upper quartile of |Δ log ITL| between calls consecutive in start time (None when too few or unordered)."""
    if not (w.streaming and w.start_known):
        return None
    order = np.argsort(w.start_s, kind="stable")
    itl = w.itl[order]
    itl = itl[np.isfinite(itl) & (itl > 0)]
    if itl.size < MIN_CALLS:
        return None
    return float(np.quantile(np.abs(np.diff(np.log(itl))), JUMP_QUANTILE))


def itl_jump_change(b: CallWindow, e: CallWindow) -> float:
    """How much larger the call-to-call jump of log ITL is in the episode than in the baseline (log units; 0 when
    either window does not stream, lacks start times or has fewer than :data:`MIN_CALLS` measured ITLs)."""
    jb, je = _jumps(b), _jumps(e)
    if jb is None or je is None:
        return 0.0
    return je - jb
