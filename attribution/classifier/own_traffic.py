"""The series' own traffic as a cause: longer prompts or outputs are ``prefill_growth`` / ``output_growth``.

A series whose own callers started sending longer prompts or asking for longer answers gets slower for a reason
that is not the provider's. Reading that as contention, a route move or an eviction sends an on-call engineer to
the wrong team, so after the classifier this rule checks the medians of the series' own token sizes (input,
uncached input, output) in the episode against its baseline:

* a size **grew** when its rise is real for the calls behind it (a one-sided rank z of at least :data:`GROWTH_Z`,
  :func:`rise_z`: on a sparse series a median of 20 calls of a heavy-tailed size moves by 30 % with nothing
  changed, while 2,000 calls show a 5 % rise), and its median rose by at least :data:`OWN_GROWTH` (25 %) while the
  decomposition books a positive share of the change to it, or by at least :data:`OWN_GROWTH_MIN` (10 %) while its
  group carries at least half of the change, or at all while the calls are no slower than their own sizes explain
  (:func:`within_tokens`: the per-call evidence that the sizes are the whole story). The decomposition, not the ratio
  alone, says which tokens carry the extra milliseconds; output growth cannot move a TTFT metric, and its group then
  carries nothing;
* a growth label the classifier chose for a size that did **not** grow (by the rule above) is no label:
  :func:`unsupported_growth` names it and the classifier's next answer is taken instead (a route move that lengthened
  the p95's calls reads as "output growth" to features that see the output group's share, not the sizes) — when a
  provider mechanism, only if evidence of its own backs it (:func:`backed`: the calls are slower than their sizes
  explain, or the decomposition books it half the change), else ``unexplained``;
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
from scipy.stats import rankdata

from spanprism.attribution.calls_window import CallWindow
from spanprism.attribution.classifier.focus import TokenResiduals
from spanprism.attribution.decomposition.decompose import Decomposition, parse_metric

#: Relative rise of a median token size that is growth of the series' own traffic (issue 11's 25 %).
OWN_GROWTH = 0.25
#: Smaller rise that still counts when the decomposition books at least half of the change to that size.
OWN_GROWTH_MIN = 0.10
#: Share of the change the grown size's group must carry below :data:`OWN_GROWTH`.
CARRIES_SHARE = 0.5
#: One-sided z of the rise of a size (ranks of the calls of both windows, :func:`rise_z`) below which the rise
#: may be the sampling noise of few calls (5 %: a gate on a label, not a detector).
GROWTH_Z = 1.645
#: Size quantile whose exceedances a tail metric (p90 and above) tests (:func:`rise_z`).
TAIL_LEVEL = 0.9
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
    z: float = np.inf  # one-sided z of the size's rise for the calls behind it (inf: taken as known)

    @property
    def significant(self) -> bool:
        """Is the rise more than the sampling noise of the calls behind it (:data:`GROWTH_Z`)?"""
        return self.z >= GROWTH_Z

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
            "z": round(self.z, 3) if np.isfinite(self.z) else None,
        }


def token_sizes(b: CallWindow, e: CallWindow, metric: str | None = None) -> list[TokenGrowth]:
    """Median input, uncached input and output tokens of both windows (sizes neither window knows are left out), with
    the rise's z for the calls behind it (:func:`rise_z`; a tail metric also tests the sizes' upper tail)."""
    pairs = {"input": (b.input, e.input), "uncached_input": (b.uncached, e.uncached), "output": (b.output, e.output)}
    tail = _tail_level(metric)
    out = []
    for name, (xb, xe) in pairs.items():
        xb, xe = xb[np.isfinite(xb)], xe[np.isfinite(xe)]
        if xb.size and xe.size:
            out.append(TokenGrowth(name, float(np.median(xb)), float(np.median(xe)), rise_z(xb, xe, tail)))
    return out


def _tail_level(metric: str | None) -> float | None:
    """The size quantile whose exceedances a metric's change rides on: a p90+ metric's slowest calls are its longest
    ones, so their share is tested at :data:`TAIL_LEVEL` (a p95 of 40 calls has 2 calls above it: too few to count)."""
    if metric is None:
        return None
    q = parse_metric(metric).q
    return TAIL_LEVEL if q is not None and q >= TAIL_LEVEL else None


def rise_z(baseline: np.ndarray, episode: np.ndarray, tail: float | None = None) -> float:
    """One-sided z of the rise of the sizes from ``baseline`` to ``episode``, its power growing with the calls of both
    windows: the Mann-Whitney rank statistic (normal approximation, ties corrected), which a few very long prompts
    cannot drive and which sees a ×1.4 of every answer even when the sizes mix short and long modes; with ``tail``, the
    larger of that and the excess share of episode calls above the baseline's ``tail`` quantile (binomial, with the
    baseline quantile's own error), since growth confined to the longest calls moves a p95 and not the ranks."""
    b, e = np.asarray(baseline, dtype=float), np.asarray(episode, dtype=float)
    nb, ne = b.size, e.size
    if nb < 2 or ne < 2:
        return 0.0
    ranks = rankdata(np.concatenate([b, e]))
    u = float(ranks[nb:].sum()) - ne * (ne + 1) / 2.0
    _, counts = np.unique(ranks, return_counts=True)
    n = nb + ne
    var = nb * ne / 12.0 * ((n + 1) - float(np.sum(counts**3 - counts)) / (n * (n - 1)))
    z = (u - nb * ne / 2.0) / np.sqrt(var) if var > 0 else 0.0
    if tail is not None:
        p0 = 1.0 - tail
        above = float(np.mean(e > np.quantile(b, tail, method="inverted_cdf")))
        z = max(z, (above - p0) / float(np.sqrt(p0 * (1 - p0) * (1 / ne + 1 / nb))))
    return float(z)


def _carried(d: Decomposition, label: str, *, within: bool = False) -> float:
    """Milliseconds of the change a label's mechanism carries (contention: the RATES group whatever it was booked to,
    so a per-token slowdown short of "nearly all routes" still counts as one — unless ``within``: the calls are no
    slower than their own sizes explain (:func:`within_tokens`), and the RATES group is then the p95's mix of calls,
    not a slowdown)."""
    ms = float(d.contributions_ms.get(label, 0.0))
    if label == "batch_contention" and not within:
        ms = max(ms, float(d.group_effects_ms.get("rates", 0.0)))
    return ms


def grown(d: Decomposition, sizes: list[TokenGrowth], *, within: bool = False) -> list[TokenGrowth]:
    """The sizes that grew by the rule of the module docstring (``within``: see :func:`within_tokens`)."""
    change = max(d.change_ms, 0.0)
    out = []
    for size in sizes:
        if not size.significant:
            continue
        carried = _carried(d, size.label, within=within)
        large = size.change >= OWN_GROWTH and carried > 0
        carrying = size.change >= OWN_GROWTH_MIN and change > 0 and carried >= CARRIES_SHARE * change
        explains = within and size.change > 0 and carried > 0
        if large or carrying or explains:
            out.append(size)
    return out


def unsupported_growth(d: Decomposition, sizes: list[TokenGrowth], *, within: bool = False) -> set[str]:
    """The growth labels no grown size supports (:func:`grown`): the classifier may not answer them."""
    supported = {g.label for g in grown(d, sizes, within=within)}
    return {lab for lab in _SIZES.values() if lab not in supported}


def backed(label: str, d: Decomposition, *, beyond_tokens: bool = False) -> bool:
    """Is a provider mechanism ``label`` backed by evidence of its own: the calls are slower than their sizes explain
    (:func:`beyond_tokens`, the per-call test), or the decomposition books it at least :data:`CARRIES_SHARE` of the
    change? Asked of the classifier's *second* answer once its growth answer is barred: a guess the features made
    twice without a slowdown behind it is no label (``unexplained``)."""
    if label not in _MECHANISMS or beyond_tokens:
        return True
    change = d.change_ms
    return change <= 0 or float(d.contributions_ms.get(label, 0.0)) >= CARRIES_SHARE * change


def within_tokens(residuals: TokenResiduals | None, rows: slice | np.ndarray | None = None) -> bool:
    """Are the episode calls ``rows`` no slower than their own prompt and output sizes explain, *for the calls behind
    them*? The upper :data:`BEYOND_Z` confidence bound of the mean token-adjusted ln-latency residual (:mod:`.focus`)
    stays below ln(1 + :data:`BEYOND_TOKENS`). The complement of :func:`beyond_tokens` that needs evidence too: few
    calls leave both false."""
    if residuals is None:
        return False
    shift, z, n = residuals.shift(rows)
    if n == 0:
        return False
    se = shift / z if z != 0 else np.inf
    return bool(shift + BEYOND_Z * se < np.log1p(BEYOND_TOKENS)) if np.isfinite(se) and se > 0 else False


def beyond_tokens(residuals: TokenResiduals | None, rows: slice | np.ndarray | None = None) -> bool:
    """Is the episode slower than its own prompt and output sizes explain? The mean token-adjusted ln-latency residual
    (:mod:`.focus`) of the episode calls ``rows`` is at least ln(1 + :data:`BEYOND_TOKENS`) *and* significant at
    :data:`BEYOND_Z` (a one-sided z on the unit-variance residuals: its power grows with the calls)."""
    if residuals is None:
        return False
    shift, z, n = residuals.shift(rows)
    return n > 0 and shift >= np.log1p(BEYOND_TOKENS) and z >= BEYOND_Z


def own_traffic_label(
    label: str, d: Decomposition, sizes: list[TokenGrowth], *, beyond_tokens: bool = False, within: bool = False
) -> tuple[str, list[dict[str, object]]]:
    """(label, evidence rows): the growth label when the series' own tokens carry the change, else ``label``.

    ``beyond_tokens``: the calls are slower than their own token sizes explain (:func:`beyond_tokens`); a provider
    mechanism the classifier named then stands, whatever milliseconds the growth carries. ``within``: they are no
    slower than their sizes explain (:func:`within_tokens`); a size that grew then explains the change whatever share
    the decomposition books to it, and the RATES group is no contention. The evidence rows name every grown size
    whatever the label (a reader sees the growth next to a contention that outweighed it)."""
    grew = grown(d, sizes, within=within)
    if not grew:
        return label, []
    rows = [g.evidence(_carried(d, g.label, within=within)) for g in grew]
    if any(g.label == label for g in grew):
        return label, rows  # the classifier already named a size that grew
    if beyond_tokens and label in _MECHANISMS:
        return label, rows  # the tokens do not explain the slowdown: the provider-side reading stands
    best = max(grew, key=lambda g: (_carried(d, g.label, within=within), g.change))
    if max(_carried(d, m, within=within) for m in _MECHANISMS) >= _carried(d, best.label, within=within):
        return label, rows  # a real per-token slowdown (or route move, eviction) carries at least as much
    return best.label, rows


def growth_confidence(probabilities: Mapping[str, float], label: str, d: Decomposition) -> float:
    """Confidence of a growth label set by the rule: the classifier's own probability for it, or the share of the
    change its tokens carry when that is higher (the decomposition is then the evidence, not the model)."""
    change = d.change_ms
    share = _carried(d, label) / change if change > 0 else 0.0
    return float(np.clip(max(probabilities.get(label, 0.0), share), 0.0, 0.99))
