"""Physical checks of the classifier's answer against the per-call rates: what a mechanism must leave behind.

The trained model weighs features learned on many series; on a series whose convention hides the route, or whose
spans carry no TTFT, two mechanisms can look alike to it. Two of them still differ in a rate the calls show, and
these checks (each a one-sentence mechanism, applied after the model, see :meth:`.model.Attributor.attribute`) hold
the answer to it:

* **a hidden route move shows in decode** (:func:`route_unbacked`): when no recorded route dimension moved, a
  ``routing_change`` answer rests on a dimension the spans do not carry (a deployment, a replica). Another
  deployment, region or model snapshot is other hardware or weights: it changes the per-token decode rate of the
  calls it serves (the inter-token latency moves, or splits into two speeds when only part of the traffic moved).
  A streaming series whose TTFT rose while its ITL stayed put and did not split is waiting longer before the first
  token (an admission queue), not on another route: ``routing_change`` is barred there and the model's next answer
  taken. The cost: a hidden *region* move onto the same hardware lengthens only the network path (TTFT up, ITL
  flat) and is barred too (on the dev runs, 4 true route moves lost against 10 contentions recovered);
* **contention slows neighbours alike, a route move alternates them** (:func:`route_mixed`): a fuller batch or a
  queue slows every call in flight at the same moment alike, so calls next to each other in time keep about the
  same inter-token latency; when only a share of the traffic moved to another deployment, region or snapshot,
  neighbouring calls alternate between two decode speeds (:mod:`.decode_mix`). A ``batch_contention`` answer whose
  ITL split into two speeds (:data:`ITL_SPLIT`) that interleave in time (call-to-call ITL jump grown by
  :data:`ITL_JUMP` or more) becomes ``routing_change``, recorded route or not. A whole
  move (all traffic at once) leaves no alternation and stays with the model's answer;
* **a queue is random, a hook is constant** (:func:`delay_kind`): on a series without TTFT (non-streaming), a fixed
  delay per call (the decode rate net of the fixed part did not move; :mod:`.shape`) is either an admission queue
  or a synchronous client-side step (``unexplained``). A queue's wait varies from call to call (an exponential
  wait's interquartile range is ~1.1 × its mean), so the per-call residuals around the baseline's latency line
  spread out by about as much as they shift; a constant hook shifts them and leaves the spread. The spread growth
  relative to the shift decides between ``batch_contention`` and ``unexplained`` when it is clearly on one side.
"""

from __future__ import annotations

from collections.abc import Mapping

from spanprism.attribution.classifier.reasons import ROUTE_VISIBLE  # "no visible move" of a recorded route dimension

#: Largest |log ratio| of the median ITL that is "decode did not move" (±5 %; a route at another speed moves it
#: by 10-60 % on the calls it serves).
ITL_STILL = 0.05
#: Growth of the ITL two-cluster split strength (:func:`.shape._split_strength`) that means "two decode speeds".
ITL_SPLIT = 0.1
#: Growth of the upper-quartile call-to-call |Δ log ITL| (:func:`.decode_mix.itl_jump_change`) that means two decode
#: speeds in turn: a second backend >= ~16 % slower than the first (standby capacity, a far region and a new snapshot
#: decode 10-100 % slower); contention leaves the jump within noise (a uniform slowdown cancels in the difference).
ITL_JUMP = 0.15
#: Smallest fixed delay per call (relative to the baseline median duration) worth reading the spread of.
FIXED_DELAY = 0.1
#: Residual spread growth / fixed shift at or above which the delay varies like a queue's wait.
RANDOM_SPREAD = 0.25
#: ... and below which it is constant (a hook): between the two, the model's answer stands.
CONSTANT_SPREAD = 0.1


def route_unbacked(features: Mapping[str, float]) -> bool:
    """Is a ``routing_change`` answer without support in the rates? No recorded route dimension moved, the series
    streams (ITL is measured), and its median ITL neither moved nor split into two speeds."""
    return (
        features.get("streaming", 0.0) >= 0.5
        and features.get("tv_max", 0.0) < ROUTE_VISIBLE
        and abs(features.get("log_itl_ratio", 0.0)) < ITL_STILL
        and features.get("itl_split_change", 0.0) < ITL_SPLIT
    )


def route_mixed(features: Mapping[str, float]) -> bool:
    """Do neighbouring calls alternate between two decode speeds (a share of the traffic on another backend)? The
    episode's ITL splits into two speeds (:data:`ITL_SPLIT`, the split strength grew) *and* the two interleave in
    time (:data:`ITL_JUMP`, the call-to-call jump grew): a ramp of one speed makes neither, a random wait on a few
    calls can make a jump alone."""
    return (
        features.get("streaming", 0.0) >= 0.5
        and features.get("itl_split_change", 0.0) >= ITL_SPLIT
        and features.get("itl_jump_change", 0.0) >= ITL_JUMP
    )


def mixed_label(label: str, features: Mapping[str, float]) -> str:
    """``routing_change`` for a ``batch_contention`` answer whose decode speed alternates between neighbours."""
    return "routing_change" if label == "batch_contention" and route_mixed(features) else label


def delay_kind(features: Mapping[str, float]) -> str | None:
    """``"random"`` (a queue), ``"constant"`` (a hook) or None (streaming, no fixed delay, or in between) for the fixed
    per-call delay of a series without TTFT."""
    if features.get("streaming", 0.0) >= 0.5 or features.get("metric_ttft", 0.0) >= 0.5:
        return None
    if features.get("metric_itl", 0.0) >= 0.5:
        return None
    shift = features.get("fixed_tail_shift_rel", 0.0)
    if shift < FIXED_DELAY:
        return None
    ratio = features.get("resid_spread_change", 0.0) / shift
    if ratio >= RANDOM_SPREAD:
        return "random"
    if ratio < CONSTANT_SPREAD:
        return "constant"
    return None


def delay_label(label: str, features: Mapping[str, float]) -> str:
    """The label the fixed delay's kind calls for, when the model answered one of the two it decides between."""
    kind = delay_kind(features)
    if label == "unexplained" and kind == "random":
        return "batch_contention"
    if label == "batch_contention" and kind == "constant":
        return "unexplained"
    return label
