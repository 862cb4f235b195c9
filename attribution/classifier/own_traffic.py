"""The series' own traffic as a cause: longer prompts or outputs are ``prefill_growth`` / ``output_growth``.

A series whose own callers started sending longer prompts or asking for longer answers gets slower for a reason
that is not the provider's. Reading that as contention, a route move or an eviction sends an on-call engineer to
the wrong team, so after the classifier this rule checks the medians of the series' own token sizes (input,
uncached input, output) in the episode against its baseline:

* a size **grew** when its median rose by at least :data:`OWN_GROWTH` (25 %) and the decomposition books a positive
  share of the change to it, or by at least :data:`OWN_GROWTH_MIN` (10 %) while its group carries at least half
  of the change (the decomposition, not the ratio alone, says which tokens carry the extra milliseconds; output
  growth cannot move a TTFT metric, and its group then carries nothing);
* the per-token rates stay the discriminator: the classifier's label stands when any provider mechanism
  (contention, routing, eviction) carries at least the growth's milliseconds (for contention: the RATES group,
  i.e. prefill ms/token and ITL net of the token sizes, whether or not the decomposition booked it as
  contention). Growth plus a real per-token slowdown is still contention or routing;
* a growth label the classifier chose stands when that size grew;
* otherwise the label becomes the grown size's label (the one carrying more milliseconds when both grew), with
  one ``own_token_growth`` evidence row per grown size: baseline → observed median tokens and the change in %.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from spanprism.attribution.calls_window import CallWindow
from spanprism.attribution.classifier.focus import TokenResiduals
from spanprism.attribution.decomposition.decompose import Decomposition

#: Relative rise of a median token size that is growth of the series' own traffic (issue 11's 25 %).
OWN_GROWTH = 0.25
#: Smaller rise that still counts when the decomposition books at least half of the change to that size.
OWN_GROWTH_MIN = 0.10
#: Share of the change the grown size's group must carry below :data:`OWN_GROWTH`.
CARRIES_SHARE = 0.5
#: Unexplained slowdown (relative) beyond the token sizes, and its one-sided z, above which tokens do not explain it.
BEYOND_TOKENS = 0.10
BEYOND_Z = 2.33
#: The provider-side mechanisms: growth becomes the label only when it carries more milliseconds than each of them.
_MECHANISMS = ("batch_contention", "routing_change", "cache_eviction")
#: Token sizes → the label their growth is.
_SIZES: dict[str, str] = {"input": "prefill_growth", "uncached_input": "prefill_growth", "output": "output_growth"}


@dataclass(frozen=True)
class TokenGrowth:
    """One token size of the series' own calls: median in the baseline and in the episode."""

    tokens: str  # input | uncached_input | output
    baseline: float
    observed: float

    @property
    def label(self) -> str:
        return _SIZES[self.tokens]

    @property
    def change(self) -> float:
        return self.observed / self.baseline - 1.0 if self.baseline > 0 else (np.inf if self.observed > 0 else 0.0)

    def evidence(self, carried_ms: float) -> dict[str, object]:
        return {
            "signal": "own_token_growth",
            "tokens": self.tokens,
            "baseline": round(self.baseline, 3),
            "observed": round(self.observed, 3),
            "change_pct": round(100 * self.change, 2) if np.isfinite(self.change) else None,
            "carried_ms": round(carried_ms, 3),
        }


def token_sizes(b: CallWindow, e: CallWindow) -> list[TokenGrowth]:
    """Median input, uncached input and output tokens of both windows (sizes neither window knows are left out)."""
    pairs = {"input": (b.input, e.input), "uncached_input": (b.uncached, e.uncached), "output": (b.output, e.output)}
    out = []
    for name, (xb, xe) in pairs.items():
        xb, xe = xb[np.isfinite(xb)], xe[np.isfinite(xe)]
        if xb.size and xe.size:
            out.append(TokenGrowth(name, float(np.median(xb)), float(np.median(xe))))
    return out


def _carried(d: Decomposition, label: str) -> float:
    """Milliseconds of the change a label's mechanism carries (contention: the RATES group whatever it was booked to,
    so a per-token slowdown short of "nearly all routes" still counts as one)."""
    ms = float(d.contributions_ms.get(label, 0.0))
    if label == "batch_contention":
        ms = max(ms, float(d.group_effects_ms.get("rates", 0.0)))
    return ms


def grown(d: Decomposition, sizes: list[TokenGrowth]) -> list[TokenGrowth]:
    """The sizes that grew by the rule of the module docstring."""
    change = max(d.change_ms, 0.0)
    out = []
    for size in sizes:
        carried = _carried(d, size.label)
        large = size.change >= OWN_GROWTH and carried > 0
        carrying = size.change >= OWN_GROWTH_MIN and change > 0 and carried >= CARRIES_SHARE * change
        if large or carrying:
            out.append(size)
    return out


def beyond_tokens(residuals: TokenResiduals | None, rows: slice | np.ndarray | None = None) -> bool:
    """Is the episode slower than its own prompt and output sizes explain? The mean token-adjusted ln-latency residual
    (:mod:`.focus`) of the episode calls ``rows`` is at least ln(1 + :data:`BEYOND_TOKENS`) *and* significant at
    :data:`BEYOND_Z` (a one-sided z on the unit-variance residuals: its power grows with the calls)."""
    if residuals is None:
        return False
    shift, z, n = residuals.shift(rows)
    return n > 0 and shift >= np.log1p(BEYOND_TOKENS) and z >= BEYOND_Z


def own_traffic_label(
    label: str, d: Decomposition, sizes: list[TokenGrowth], *, beyond_tokens: bool = False
) -> tuple[str, list[dict[str, object]]]:
    """(label, evidence rows): the growth label when the series' own tokens carry the change, else ``label``.

    ``beyond_tokens``: the calls are slower than their own token sizes explain (:func:`beyond_tokens`); a provider
    mechanism the classifier named then stands, whatever milliseconds the growth carries. The evidence rows name every
    grown size whatever the label (a reader sees the growth next to a contention that outweighed it)."""
    grew = grown(d, sizes)
    if not grew:
        return label, []
    rows = [g.evidence(_carried(d, g.label)) for g in grew]
    if any(g.label == label for g in grew):
        return label, rows  # the classifier already named a size that grew
    if beyond_tokens and label in _MECHANISMS:
        return label, rows  # the tokens do not explain the slowdown: the provider-side reading stands
    best = max(grew, key=lambda g: (_carried(d, g.label), g.change))
    if max(_carried(d, m) for m in _MECHANISMS) >= _carried(d, best.label):
        return label, rows  # a real per-token slowdown (or route move, eviction) carries at least as much
    return best.label, rows


def growth_confidence(probabilities: Mapping[str, float], label: str, d: Decomposition) -> float:
    """Confidence of a growth label set by the rule: the classifier's own probability for it, or the share of the
    change its tokens carry when that is higher (the decomposition is then the evidence, not the model)."""
    change = d.change_ms
    share = _carried(d, label) / change if change > 0 else 0.0
    return float(np.clip(max(probabilities.get(label, 0.0), share), 0.0, 0.99))
