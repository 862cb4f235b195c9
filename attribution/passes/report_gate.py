"""Which labelled regressions are reported: drift of the series' own sizes and weak, unexplained shifts are not.

Detection opens an episode on a significant shift of a series' latency; the label pass then knows what detection
did not: how much of the extra milliseconds the decomposition explains and which of the series' own token sizes
grew. Two kinds of episode are stored but withheld from the regression list (and from alerts), each with one
``{"signal": "withheld", "reason": ...}`` evidence row that says why (``list_regressions(withheld=True)`` shows them):

* ``own_size_drift`` — a ``prefill_growth`` / ``output_growth`` label whose size's median rose less than
  :data:`~attribution.classifier.own_traffic.OWN_GROWTH` (25 %) while the decomposition explains at least
  :data:`EXPLAINED_SHARE` of the change: the calls are as slow as their slightly longer sizes make them. That is the
  series' traffic drifting, not a regression anyone can act on (a real step of the own sizes moves their median
  25 % or more, and then the growth label is reported);
* ``weak_unexplained`` — a shift the per-call test confirmed with fewer than :data:`WEAK_CONFIRM_Z` long-run
  standard errors over the episode's calls, which the decomposition explains less than :data:`EXPLAINED_SHARE`
  of: neither a firm shift nor a mechanism behind it (sampling wander of a sparse or drifting series). A bucket
  episode (no per-call confirmation) and any episode of several moved metrics confirmed firmly are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spanprism.attribution.classifier.own_traffic import OWN_GROWTH
from spanprism.attribution.store.records import WITHHELD

#: Share of the change the decomposition's mechanisms (everything but ``residual``) must explain for a shift to
#: have a mechanism behind it.
EXPLAINED_SHARE = 0.5
#: Per-call confirmation (the episode's mean shift over all its calls, in long-run standard errors) below which a
#: shift is weak; ``PerCallConfig.confirm_z`` (3.5) is the floor under which nothing opens at all.
WEAK_CONFIRM_Z = 5.0
_GROWTH_SIZES = {"prefill_growth": ("input", "uncached_input"), "output_growth": ("output",)}


def explained_share(contributions_ms: Mapping[str, float], change_ms: float) -> float | None:
    """Share of the change ``change_ms`` the decomposition books to a mechanism (None without a rise)."""
    if not change_ms > 0:
        return None
    return sum(float(v) for k, v in contributions_ms.items() if k != "residual") / change_ms


def own_size_drift(label: str, evidence: Sequence[Mapping[str, Any]], explained: float | None) -> bool:
    """Is a growth label carried by an own-size rise below :data:`OWN_GROWTH` that explains the change?"""
    sizes = _GROWTH_SIZES.get(label)
    if sizes is None or explained is None or explained < EXPLAINED_SHARE:
        return False
    rises = [row.get("change_pct") for row in evidence if row.get("signal") == "own_token_growth"
             and row.get("tokens") in sizes]  # fmt: skip
    # change_pct None: a size that was zero in the baseline (an infinite rise).
    return all(r is not None and r < 100 * OWN_GROWTH for r in rises)


def weak_unexplained(detections: Sequence[Mapping[str, Any]], explained: float | None) -> bool:
    """Was every moved metric opened by a per-call test confirmed below :data:`WEAK_CONFIRM_Z`, with the
    decomposition explaining less than :data:`EXPLAINED_SHARE` of the change?"""
    if explained is None or explained >= EXPLAINED_SHARE or not detections:
        return False
    confirms = [d.get("confirm_z") for d in detections]
    return all(z is not None and z < WEAK_CONFIRM_Z for z in confirms)


def withheld_row(label: str, evidence: Sequence[Mapping[str, Any]], contributions_ms: Mapping[str, float],
                 change_ms: float, detections: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:  # fmt: skip
    """The ``withheld`` evidence row of a regression that is not reported, or None when it is reported.

    ``detections``: the detection entry of every moved metric (``regressions.metrics[*].detection``);
    ``contributions_ms`` closed on ``change_ms`` (the record's observed − baseline)."""
    explained = explained_share(contributions_ms, change_ms)
    share = None if explained is None else round(explained, 3)
    if own_size_drift(label, evidence, explained):
        return {"signal": WITHHELD, "reason": "own_size_drift", "explained_share": share}
    if weak_unexplained(detections, explained):
        z = max(float(d["confirm_z"]) for d in detections)
        return {"signal": WITHHELD, "reason": "weak_unexplained", "explained_share": share, "confirm_z": round(z, 3)}
    return None
