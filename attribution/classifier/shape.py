"""Distribution-shape features: *how* the per-call latencies moved, not only how far.

Two mechanisms that raise the same p95 leave different shapes behind:

* **a route move the spans do not record** (a deployment path OTel semconv never carries, a replica behind one
  host) sends a share of the calls to a slower backend: per-call ITL/TTFT become a two-speed mixture. The upper
  quantiles move, the lower ones stay with the calls that did not move, and the episode splits into two clusters
  better than the baseline did;
* **contention** (a fuller decode batch, an admission queue) slows every call alike: in log space the whole
  distribution shifts and its spread stays about the same;
* **a fixed delay after the last token** (a synchronous client hook) adds the same milliseconds to every call: the
  per-token decode rate net of the window's fixed tail does not move, the tail does. A per-token slowdown moves the
  rate and leaves the tail.

All features are log ratios or differences of shares, 0 when the window cannot show them (too few calls, no TTFT).
"""

from __future__ import annotations

import numpy as np

from spanprism.attribution.calls_window import NULL_MARK, CallWindow
from spanprism.attribution.classifier.windows import moved_masks

#: Fewest finite per-call values on each side for a shape statistic to mean anything.
MIN_CALLS = 12
ROUTE_DIMS = ("region", "server_address", "deployment", "response_model", "system_fingerprint")

SHAPE_FEATURES: tuple[str, ...] = (
    "itl_low_shift",
    "itl_spread_change",
    "itl_above_base_p90",
    "itl_split_change",
    "log_net_rate_ratio",
    "fixed_tail_shift_rel",
    "route_unrecorded_share",
)
#: Computed and tested, but not fed to the model: an admission queue is a *random* additive delay, so it widens the
#: TTFT and the per-call residual spread just as a partial route move does; only decode (ITL) is free of it.
SHAPE_EVIDENCE: tuple[str, ...] = ("ttft_low_shift", "ttft_spread_change", "ttft_split_change", "resid_spread_change")
#: Standard errors an intercept shift must clear to count (else it reads as 0).
INTERCEPT_Z = 3.0
#: Read by the reason rules only (not fed to the model; see :func:`reason_shape_features`).
REASON_EVIDENCE: tuple[str, ...] = ("host_intercept_shift_ms", "input_growth_taper")


def _logs(x: np.ndarray) -> np.ndarray:
    x = x[np.isfinite(x) & (x > 0)]
    return np.log(x)


def _split_strength(z: np.ndarray) -> float:
    """Best two-cluster split of sorted values (Otsu): between-cluster variance / total variance, in [0, 1].

    A unimodal normal sample gives ~2/π ≈ 0.64; a clear two-speed mixture approaches 1."""
    z = np.sort(z)
    n = z.size
    total = float(np.var(z))
    if n < 2 or total <= 0:
        return 0.0
    csum = np.cumsum(z)[:-1]
    k = np.arange(1, n)
    mean_lo, mean_hi = csum / k, (z.sum() - csum) / (n - k)
    between = (k / n) * ((n - k) / n) * (mean_hi - mean_lo) ** 2
    # Splits that leave < 5% of calls on one side are outliers, not a second mode.
    ok = (k >= 0.05 * n) & (n - k >= 0.05 * n)
    return float(between[ok].max() / total) if np.any(ok) else 0.0


def _shape(base: np.ndarray, epi: np.ndarray, prefix: str, *, with_above: bool) -> dict[str, float]:
    names = [f"{prefix}_low_shift", f"{prefix}_spread_change", f"{prefix}_split_change"]
    if with_above:
        names.append(f"{prefix}_above_base_p90")
    lb, le = _logs(base), _logs(epi)
    if lb.size < MIN_CALLS or le.size < MIN_CALLS:
        return dict.fromkeys(names, 0.0)
    qb, qe = np.quantile(lb, [0.25, 0.5, 0.9]), np.quantile(le, [0.25, 0.5, 0.9])
    out = {
        # How far the lower quartile moved relative to the median: ~0 when all calls shift, < 0 when the bulk stays.
        f"{prefix}_low_shift": float((qe[0] - qb[0]) - (qe[1] - qb[1])),
        # Log-space spread (p90 − p25) growth: a partial move widens it, a uniform slowdown does not.
        f"{prefix}_spread_change": float((qe[2] - qe[0]) - (qb[2] - qb[0])),
        f"{prefix}_split_change": _split_strength(le) - _split_strength(lb),
    }
    if with_above:
        out[f"{prefix}_above_base_p90"] = float(np.mean(le > qb[2])) - 0.1
    return out


def _decode_part(w: CallWindow) -> np.ndarray:
    """What follows the first token (streaming) or the whole call (non-streaming), in ms."""
    return w.duration - w.ttft if w.streaming else w.duration


def _rate_and_tail(w: CallWindow) -> tuple[float, float] | None:
    """(ms per output token, fixed ms) from the medians of the short- and long-output halves of the window."""
    y, x = _decode_part(w), w.output
    ok = np.isfinite(y) & (x > 1)
    y, x = y[ok], x[ok]
    if y.size < MIN_CALLS:
        return None
    cut = float(np.median(x))
    lo, hi = x <= cut, x > cut
    if np.count_nonzero(lo) < 4 or np.count_nonzero(hi) < 4:
        return None
    dx = float(np.median(x[hi]) - np.median(x[lo]))
    if dx <= 0:
        return None
    rate = (float(np.median(y[hi])) - float(np.median(y[lo]))) / dx
    return rate, float(np.median(y[lo])) - rate * float(np.median(x[lo]))


def _net_rate_features(b: CallWindow, e: CallWindow) -> dict[str, float]:
    out = {"log_net_rate_ratio": 0.0, "fixed_tail_shift_rel": 0.0, "resid_spread_change": 0.0}
    fb, fe = _rate_and_tail(b), _rate_and_tail(e)
    level = float(np.nanmedian(b.duration)) if b.n else 0.0
    if fb is None or fe is None or level <= 0:
        return out
    (rb, tb), (re_, te) = fb, fe
    if rb > 0 and re_ > 0:
        out["log_net_rate_ratio"] = float(np.log(re_ / rb))
    out["fixed_tail_shift_rel"] = float(np.clip((te - tb) / level, -5.0, 5.0))
    # Residuals around the baseline's line: a constant delay shifts them, a random queue also widens them.
    res_b = _decode_part(b) - (tb + rb * b.output)
    res_e = _decode_part(e) - (tb + rb * e.output)
    res_b, res_e = res_b[np.isfinite(res_b)], res_e[np.isfinite(res_e)]
    if res_b.size >= MIN_CALLS and res_e.size >= MIN_CALLS:
        iqr_b = float(np.subtract(*np.quantile(res_b, [0.75, 0.25])))
        iqr_e = float(np.subtract(*np.quantile(res_e, [0.75, 0.25])))
        out["resid_spread_change"] = float(np.clip((iqr_e - iqr_b) / level, -5.0, 5.0))
    return out


def unrecorded_dims(b: CallWindow, e: CallWindow) -> list[str]:
    """Route dimensions the convention never records: NULL on every call of both windows."""
    if not (b.n and e.n):
        return []
    return [d for d in ROUTE_DIMS if np.all(b.routes[d] == NULL_MARK) and np.all(e.routes[d] == NULL_MARK)]


def shape_features(b: CallWindow, e: CallWindow) -> dict[str, float]:
    """All :data:`SHAPE_FEATURES` for a baseline and an episode window."""
    feats: dict[str, float] = {}
    streaming = b.streaming and e.streaming
    itl = (
        _shape(b.itl, e.itl, "itl", with_above=True)
        if streaming
        else _shape(np.empty(0), np.empty(0), "itl", with_above=True)
    )
    feats.update(itl)
    feats.update(
        _shape(b.ttft if streaming else np.empty(0), e.ttft if streaming else np.empty(0), "ttft", with_above=False)
    )
    feats.update(_net_rate_features(b, e))
    feats["route_unrecorded_share"] = len(unrecorded_dims(b, e)) / len(ROUTE_DIMS)
    return {k: float(np.clip(np.nan_to_num(feats[k]), -10.0, 10.0)) for k in SHAPE_FEATURES + SHAPE_EVIDENCE}


def _latency_line(w: CallWindow, mask: np.ndarray) -> tuple[float, float] | None:
    """Line of TTFT (streaming) or duration (also on output tokens) over uncached input tokens for the calls in
    ``mask``: (intercept ms, its standard error). Latency noise scales with the call (a slower GPU slows the whole
    call), so the fit weighs calls by 1 / fitted² (iteratively reweighted least squares on relative errors):
    the long calls' large absolute scatter then does not tip the intercept."""
    y = (w.ttft if w.streaming else w.duration)[mask]
    ok = np.isfinite(y)
    if np.count_nonzero(ok) < MIN_CALLS:
        return None
    cols = [w.uncached[mask][ok]] if w.streaming else [w.uncached[mask][ok], w.output[mask][ok]]
    y = y[ok]
    # A column that does not vary cannot be told apart from the intercept: leave it out.
    x = np.column_stack([np.ones(y.size), *(c for c in cols if np.ptp(c) > 0)])
    floor = 1e-3 * max(float(np.median(np.abs(y))), 1e-9)
    weight = np.ones(y.size)
    for _ in range(4):
        root = np.sqrt(weight)
        beta = np.linalg.lstsq(x * root[:, None], y * root, rcond=None)[0]
        weight = 1.0 / np.maximum(x @ beta, floor) ** 2
    if y.size <= x.shape[1]:
        return None
    # Sandwich (heteroscedasticity-robust) covariance: the noise is only roughly proportional to the fit.
    bread = np.linalg.pinv((x * weight[:, None]).T @ x)
    meat = (x * (weight**2 * (y - x @ beta) ** 2)[:, None]).T @ x
    cov = bread @ meat @ bread * y.size / (y.size - x.shape[1])
    return float(beta[0]), float(np.sqrt(max(cov[0, 0], 0.0)))


def host_intercept_shift_ms(b: CallWindow, e: CallWindow) -> float:
    """How much later the endpoint hosts that gained traffic answer than the hosts it left, at zero tokens (ms).

    A move to another region adds network round trip: a fixed, token-independent delay on every call of the new
    route, i.e. the intercept of the latency line rises. A move to another deployment in the same region (other
    capacity or hardware) changes the per-token rates instead and keeps the intercept. 0 when no host gained
    traffic, either side has too few calls for a line, or the shift is within :data:`INTERCEPT_Z` standard errors."""
    left, gained = moved_masks(b.routes["server_address"], e.routes["server_address"])
    if b.streaming != e.streaming or not np.any(gained):
        return 0.0
    lb, le = _latency_line(b, left), _latency_line(e, gained)
    if lb is None or le is None:
        return 0.0
    shift = le[0] - lb[0]
    # An intercept the calls cannot pin down (few calls, or a duration dominated by noisy decode) says nothing.
    return float(shift) if abs(shift) >= INTERCEPT_Z * float(np.hypot(lb[1], le[1])) else 0.0


def input_growth_taper(b: CallWindow, e: CallWindow) -> float:
    """How much the relative growth of the input tokens falls off from the middle to the largest calls:
    max(log ratio at p50, at p75) − log ratio at p90.

    A longer shared prefix (system prompt) adds the same tokens to every call it reaches, which is relatively less
    for large calls: the log ratio falls with size (> 0). Longer user input scales the variable part of each call,
    which weighs most in the largest calls: the log ratio rises with size (< 0). 0 without enough calls."""
    if b.n < MIN_CALLS or e.n < MIN_CALLS:
        return 0.0
    qs = (0.5, 0.75, 0.9)
    lr = np.log((np.quantile(e.input, qs) + 1.0) / (np.quantile(b.input, qs) + 1.0))
    return float(max(lr[0], lr[1]) - lr[2])


def reason_shape_features(b: CallWindow, e: CallWindow) -> dict[str, float]:
    """All :data:`REASON_EVIDENCE` for a baseline and an episode window (ms are not clipped: they are physical)."""
    return {"host_intercept_shift_ms": host_intercept_shift_ms(b, e), "input_growth_taper": input_growth_taper(b, e)}
