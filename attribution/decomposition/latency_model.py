"""Per-series latency model behind the decomposition: the robust baseline fit and per-window route rates.

The physics (DESIGN.md): TTFT ≈ network + queue + prefill(uncached) + small cost(cached); decode ≈ ITL × (output − 1).
A streaming call is modelled as

    ttft   = max(a_r + b_u,r · uncached + b_c,r · cached, floor) · scale_r · exp(eps)
    decode = itl_r · max(output − 1, 0) · m + o

and a non-streaming call (no TTFT) as ``duration = max(a_r + b·(uncached, cached, output), floor) · scale_r · exp(eps)``
with ``itl_r = 0``. ``r`` is the call's route; ``eps``, ``m``, ``o`` are the call's own residuals, defined so that the
call's own side parameters reproduce its observed latency exactly. A :class:`SideParams` holds the per-route
parameters of one window (baseline or episode); :func:`calibrate_sides` builds both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import statsmodels.api as sm

from spanprism.attribution.calls_window import CallWindow

#: Baseline calls a route needs for its own slopes (else series-level slopes with its own level).
MIN_OWN_FIT = 50
#: Baseline calls a route needs to be "known"; rarer routes take their parameters from the episode (both sides).
MIN_KNOWN = 10
#: Episode calls a known route needs for its own episode rates (else the series-level episode shift).
MIN_EPISODE_ROUTE = 10
#: Rows fed to one robust fit (a seeded subsample keeps the fit fast on big windows; 1.5k rows pin 3 slopes well).
MAX_FIT_ROWS = 1500
#: Rows a slope needs: below ``MIN_SLOPE_ROWS + 5·k`` rows a k-slope fit is noise, so the model drops to a level.
MIN_SLOPE_ROWS = 20


def design(columns: tuple[str, ...], inp: np.ndarray, cached: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Covariate matrix: uncached = input − cached (cached clipped to the prompt), cached, output."""
    cached = np.minimum(cached, inp)
    values = {"uncached": inp - cached, "cached": cached, "output": output}
    return np.column_stack([values[c] for c in columns]) if columns else np.zeros((inp.size, 0))


def _informative(x: np.ndarray) -> bool:
    # At least 5 rows away from the median: a covariate that moves on 1 row of 5,000 cannot pin a slope.
    return x.size > 0 and np.count_nonzero(x != np.median(x)) >= 5


def _solve(y: np.ndarray, X: np.ndarray) -> np.ndarray | None:
    """Huber-robust regression of y on [1, X] in relative errors (statsmodels RLM); None when it cannot be solved.

    Latency noise is multiplicative (a long call varies by more milliseconds than a short one), so every row is
    divided by a first least-squares prediction and the robust fit runs on relative errors. Without that, the long
    calls' large absolute noise is down-weighted and the per-token slopes come out biased low.
    """
    A = np.column_stack([np.ones(y.size), X])
    start = np.linalg.lstsq(A, y, rcond=None)[0]
    if not np.all(np.isfinite(start)):
        return None
    pred = np.maximum(A @ start, 0.05 * max(float(np.median(y)), 1e-9))
    y_rel, A_rel = y / pred, A / pred[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a perfect fit has zero scale: IRLS warns, we fall back below
        try:
            params = np.asarray(
                sm.RLM(y_rel, A_rel, M=sm.robust.norms.HuberT()).fit(tol=1e-6, start_params=start).params
            )
        except (ValueError, np.linalg.LinAlgError, ZeroDivisionError):
            params = start
    return params if np.all(np.isfinite(params)) else start


def robust_fit(
    y: np.ndarray, X: np.ndarray, keep: list[int] | None, rng: np.random.Generator
) -> tuple[float, np.ndarray, list[int]]:
    """Fit y ~ a + X·b with non-negative slopes; returns (a, b over all columns, zeros where dropped, kept columns).

    ``keep=None`` chooses the columns (informative ones, as many as the rows support); a list forces them.
    A negative slope is unphysical (more tokens never make a call faster), so its column is dropped and refit.
    """
    if y.size > MAX_FIT_ROWS:
        idx = np.sort(rng.choice(y.size, MAX_FIT_ROWS, replace=False))
        y, X = y[idx], X[idx]
    if keep is None:
        keep = [j for j in range(X.shape[1]) if _informative(X[:, j])]
        keep = keep[: max(0, (y.size - MIN_SLOPE_ROWS) // 5)]
    keep = list(keep)
    slopes = np.zeros(X.shape[1])
    while keep:
        params = _solve(y, X[:, keep])
        if params is None:
            break
        if np.all(params[1:] >= 0):
            slopes[keep] = params[1:]
            return float(params[0]), slopes, keep
        keep.pop(int(np.argmin(params[1:])))
    return float(np.median(y)) if y.size else 0.0, slopes, []


@dataclass
class SideParams:
    """Per-route latency parameters of one window; arrays are indexed by route code."""

    intercept: np.ndarray
    slopes: np.ndarray  # (routes, covariates)
    scale: np.ndarray
    itl: np.ndarray

    def copy(self) -> SideParams:
        return SideParams(self.intercept.copy(), self.slopes.copy(), self.scale.copy(), self.itl.copy())

    def first_part(self, route: np.ndarray, X: np.ndarray, floor: float) -> np.ndarray:
        """TTFT (streaming) or whole duration (non-streaming) before the call's own noise."""
        linear = self.intercept[route] + np.einsum("ij,ij->i", self.slopes[route], X)
        return np.maximum(linear, floor) * self.scale[route]


@dataclass
class BaselineFit:
    """The baseline latency model of one series: column set, per-route parameters, route support and fit quality."""

    streaming: bool
    columns: tuple[str, ...]
    params: SideParams
    pooled_intercept: float
    pooled_slopes: np.ndarray
    pooled_itl: float
    floor: float
    n_base: np.ndarray  # baseline calls per route
    own_slopes: np.ndarray  # bool per route
    stats: dict[str, float | None] = field(default_factory=dict)

    @property
    def known(self) -> np.ndarray:
        return self.n_base >= MIN_KNOWN

    def target(self, calls: CallWindow) -> np.ndarray:
        """What the first part models: TTFT for streaming series, duration otherwise."""
        return calls.ttft if self.streaming else calls.duration


def fit_baseline(
    calls: CallWindow, route: np.ndarray, n_routes: int, streaming: bool, rng: np.random.Generator
) -> BaselineFit:
    """Fit the series-level robust model, then per-route slopes (frequent routes) or per-route levels (others)."""
    columns = ("uncached", "cached") if streaming else ("uncached", "cached", "output")
    X = design(columns, calls.input, calls.cached, calls.output)
    y = calls.ttft if streaming else calls.duration
    floor = max(1e-3, 0.01 * float(np.median(y))) if y.size else 1e-3
    a0, b0, keep = robust_fit(y, X, None, rng)
    n_base = np.bincount(route, minlength=n_routes)
    params = SideParams(np.full(n_routes, a0), np.tile(b0, (n_routes, 1)), np.ones(n_routes), np.zeros(n_routes))
    own = np.zeros(n_routes, dtype=bool)
    for r in np.flatnonzero(n_base):
        on = route == r
        own_fit = _route_fit(y[on], X[on], keep, b0, rng) if n_base[r] >= MIN_OWN_FIT and keep else None
        if own_fit is not None:
            params.intercept[r], params.slopes[r] = own_fit
            own[r] = True
        else:  # series-level slopes; the route's own level (network + queue) as the median offset of its calls
            params.intercept[r] = a0 + float(np.median(y[on] - X[on] @ b0))
    itl = calls.itl_derived
    pooled_itl = float(np.nanmedian(itl)) if streaming and np.any(np.isfinite(itl)) else 0.0
    if streaming:
        for r in range(n_routes):
            route_itl = itl[(route == r) & np.isfinite(itl)]
            params.itl[r] = float(np.median(route_itl)) if route_itl.size else pooled_itl
    fit = BaselineFit(streaming, columns, params, a0, b0, pooled_itl, floor, n_base, own)
    fit.stats = fit_quality(fit, calls, route)
    return fit


def _route_fit(
    y: np.ndarray, X: np.ndarray, keep: list[int], pooled: np.ndarray, rng: np.random.Generator
) -> tuple[float, np.ndarray] | None:
    """A frequent route's own fit on the series' covariates. A covariate whose own slope comes out negative (too
    little spread on this route to pin it) is held at the series-level slope and the others refit around it."""
    a, b, kept = robust_fit(y, X, keep, rng)
    if kept == keep:
        return a, b
    held = [j for j in keep if j not in kept]
    if not kept:
        return None
    a, b, refit = robust_fit(y - X[:, held] @ pooled[held], X, kept, rng)
    if refit != kept:
        return None
    b[held] = pooled[held]
    return a, b


def _r2(y: np.ndarray, pred: np.ndarray) -> float | None:
    ss = float(np.sum((y - y.mean()) ** 2)) if y.size else 0.0
    return None if ss <= 0 else 1.0 - float(np.sum((y - pred) ** 2)) / ss


def fit_quality(fit: BaselineFit, calls: CallWindow, route: np.ndarray) -> dict[str, float | None]:
    """R² and MAE of the noise-free baseline model on the baseline window (e2e, and TTFT when streaming)."""
    X = design(fit.columns, calls.input, calls.cached, calls.output)
    first = fit.params.first_part(route, X, fit.floor)
    e2e = first + fit.params.itl[route] * np.maximum(calls.output - 1, 0)
    stats: dict[str, float | None] = {
        "r2": _r2(calls.duration, e2e),
        "mae_ms": float(np.mean(np.abs(calls.duration - e2e))) if calls.n else None,
    }
    if fit.streaming:
        stats["ttft_r2"] = _r2(calls.ttft, first)
        stats["ttft_mae_ms"] = float(np.mean(np.abs(calls.ttft - first))) if calls.n else None
    return stats


@dataclass
class Residuals:
    """A call's own noise relative to its side's parameters: exp(eps) on the first part, decode = itl·gaps·m + o."""

    eps: np.ndarray
    m: np.ndarray
    o: np.ndarray

    @cached_property
    def factor(self) -> np.ndarray:
        """exp(eps), computed once: the game multiplies by it 32 times."""
        return np.exp(self.eps)


def residuals(fit: BaselineFit, params: SideParams, calls: CallWindow, route: np.ndarray) -> Residuals:
    """Residuals that make ``params`` reproduce each call's observed latency exactly."""
    X = design(fit.columns, calls.input, calls.cached, calls.output)
    first = params.first_part(route, X, fit.floor)
    eps = np.log(np.maximum(fit.target(calls), fit.floor) / first)
    if not fit.streaming:
        return Residuals(eps, np.ones(calls.n), np.zeros(calls.n))
    gaps = np.maximum(calls.output - 1.0, 0.0)
    rate = params.itl[route] * gaps
    ok = rate > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(ok, calls.decode / rate, 1.0)
    return Residuals(eps, m, np.where(ok, 0.0, calls.decode))


#: A per-route rate "rose" when it moved by at least this fraction (materiality, well above the ~3% noise of a
#: median over the ≥10 calls a route needs for its own episode estimate).
RATE_RISE = 0.10


def _median(x: np.ndarray, default: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else default


def _new_route_params(
    fit: BaselineFit, sides: tuple[SideParams, SideParams], epi: CallWindow, epi_route: np.ndarray
) -> None:
    """Routes the baseline barely saw get episode-estimated parameters on BOTH sides: moving traffic there is ROUTE."""
    X_e = design(fit.columns, epi.input, epi.cached, epi.output)
    y_e = fit.target(epi)
    episode_itl = _median(epi.itl_derived, fit.pooled_itl) if fit.streaming else 0.0
    for r in np.flatnonzero(~fit.known & (np.bincount(epi_route, minlength=fit.n_base.size) > 0)):
        on = epi_route == r
        level = fit.pooled_intercept + float(np.median(y_e[on] - X_e[on] @ fit.pooled_slopes))
        itl = _median(epi.itl_derived[on], episode_itl) if fit.streaming else 0.0
        for side in sides:
            side.intercept[r], side.slopes[r], side.scale[r], side.itl[r] = level, fit.pooled_slopes, 1.0, itl


def _per_route(values: np.ndarray, route: np.ndarray, r: int, pooled: float) -> float:
    own = values[(route == r) & np.isfinite(values)]
    return float(np.median(own)) if own.size >= MIN_EPISODE_ROUTE else pooled


def calibrate_sides(
    fit: BaselineFit, base: CallWindow, base_route: np.ndarray, epi: CallWindow, epi_route: np.ndarray
) -> tuple[SideParams, SideParams, list[RouteRates]]:
    """Baseline-side and episode-side per-route parameters, plus per-route rate diagnostics.

    Episode rates on known routes: streaming → TTFT shift = median(observed TTFT − baseline prediction) added to the
    level, ITL = the episode's median per-call ITL; non-streaming → a duration scale = median(observed / prediction).
    Routes with too few episode calls take the series-level episode shift/multiplier.
    """
    base_side, epi_side = fit.params.copy(), fit.params.copy()
    _new_route_params(fit, (base_side, epi_side), epi, epi_route)
    X_e = design(fit.columns, epi.input, epi.cached, epi.output)
    pred = fit.params.first_part(epi_route, X_e, fit.floor)
    shared = fit.known[epi_route]
    n_epi = np.bincount(epi_route, minlength=fit.n_base.size)
    if fit.streaming:
        shift = epi.ttft - pred
        pooled_shift = _median(shift[shared], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            itl_ratio = np.where(fit.params.itl[epi_route] > 0, epi.itl_derived / fit.params.itl[epi_route], np.nan)
        pooled_ratio = _median(itl_ratio[shared], 1.0)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = epi.duration / pred
        pooled_scale = _median(scale[shared], 1.0)
    for r in np.flatnonzero(fit.known & (n_epi > 0)):
        if fit.streaming:
            epi_side.intercept[r] += _per_route(shift, epi_route, r, pooled_shift)
            itl_r = _per_route(epi.itl_derived, epi_route, r, np.nan)
            epi_side.itl[r] = itl_r if np.isfinite(itl_r) else fit.params.itl[r] * pooled_ratio
        else:
            epi_side.scale[r] = _per_route(scale, epi_route, r, pooled_scale)
    diagnostics = route_diagnostics(fit, (base_side, epi_side), base, base_route, epi, epi_route)
    return base_side, epi_side, diagnostics


@dataclass
class RouteRates:
    """How one route's rates moved between the windows; ``rose`` = a known route's ITL, TTFT level, queue or scale
    went up by at least :data:`RATE_RISE` (the batch-contention signature when it holds on nearly all routes)."""

    n_baseline: int
    n_episode: int
    known: bool
    own_slopes: bool
    rose: bool = False
    ttft_shift_ms: float | None = None
    itl_ratio: float | None = None
    scale: float | None = None
    queue_p50_baseline_ms: float | None = None
    queue_p50_episode_ms: float | None = None


def route_diagnostics(
    fit: BaselineFit,
    sides: tuple[SideParams, SideParams],
    base: CallWindow,
    base_route: np.ndarray,
    epi: CallWindow,
    epi_route: np.ndarray,
) -> list[RouteRates]:
    """Per-route counts and rate moves, indexed by route code."""
    base_side, epi_side = sides
    n_epi = np.bincount(epi_route, minlength=fit.n_base.size)
    rows: list[RouteRates] = []
    for r in range(fit.n_base.size):
        row = RouteRates(int(fit.n_base[r]), int(n_epi[r]), bool(fit.known[r]), bool(fit.own_slopes[r]))
        if fit.streaming:
            level = _median(fit.target(base)[base_route == r], 0.0)
            row.ttft_shift_ms = float(epi_side.intercept[r] - base_side.intercept[r])
            row.itl_ratio = float(epi_side.itl[r] / base_side.itl[r]) if base_side.itl[r] > 0 else 1.0
            rose = row.itl_ratio >= 1 + RATE_RISE or row.ttft_shift_ms >= RATE_RISE * level
        else:
            row.scale = float(epi_side.scale[r] / base_side.scale[r])
            rose = row.scale >= 1 + RATE_RISE
        q_base, q_epi = _median(base.queue[base_route == r], np.nan), _median(epi.queue[epi_route == r], np.nan)
        if np.isfinite(q_base) and np.isfinite(q_epi):
            row.queue_p50_baseline_ms, row.queue_p50_episode_ms = q_base, q_epi
            rose = rose or (q_epi - q_base >= max(1.0, RATE_RISE * q_base))
        row.rose = bool(rose and row.known and row.n_episode > 0)
        rows.append(row)
    return rows
