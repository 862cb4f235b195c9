"""The per-call view of one window that the episode features and the exemplar picker read.

A :class:`Window` holds the ok calls (not ``status = 'error'``, with a duration) of one window as numpy arrays in
time order, with tokens resolved like the decomposition does (a NULL cache read is ``input − uncached`` when both
exist, else 0 and the window is flagged as not knowing its cache). Helpers compute mix distances and call-gap
statistics against cache lifetimes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.models.schema import ROUTE_COLUMNS

NULL = "∅"


@dataclass(frozen=True)
class Window:
    """Ok calls of one window, sorted by start time (ties by trace/span id, so input order never matters)."""

    duration: np.ndarray
    ttft: np.ndarray
    itl: np.ndarray  # observed mean ITL, else (duration − TTFT) / (output − 1)
    queue: np.ndarray
    input: np.ndarray
    cached: np.ndarray
    output: np.ndarray
    start_s: np.ndarray
    routes: dict[str, np.ndarray]
    route_key: np.ndarray
    prompt_key: np.ndarray
    trace_id: np.ndarray
    span_id: np.ndarray
    cache_known: bool
    has_prompt_key: bool

    @property
    def n(self) -> int:
        return int(self.duration.size)

    @property
    def uncached(self) -> np.ndarray:
        return self.input - self.cached

    @property
    def streaming(self) -> bool:
        return self.n > 0 and float(np.mean(np.isfinite(self.ttft))) >= 0.5

    @property
    def hours(self) -> float:
        """Time covered by the calls (first to last start, plus one mean gap so that n calls span n gaps)."""
        if self.n < 2:
            return 0.0
        span = float(self.start_s[-1] - self.start_s[0])
        return span * self.n / (self.n - 1) / 3600.0

    @property
    def cache_ratio(self) -> float:
        total = float(np.sum(self.input))
        return float(np.sum(self.cached)) / total if total > 0 else 0.0

    @property
    def hit_rate(self) -> float:
        return float(np.mean(self.cached > 0)) if self.n else 0.0

    @property
    def tail_share(self) -> np.ndarray:
        """Share of the span after TTFT not covered by the token gaps: (decode − ITL·(output − 1)) / duration."""
        decode = self.duration - self.ttft
        with np.errstate(divide="ignore", invalid="ignore"):
            return (decode - self.itl * np.maximum(self.output - 1, 0)) / self.duration


def _floats(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def _strings(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, NULL, dtype=object)
    col = pc.fill_null(table.column(name).cast(pa.string()), NULL)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)


def _ok_sorted(table: pa.Table) -> pa.Table:
    status = table.column("status") if "status" in table.column_names else pa.nulls(table.num_rows, pa.string())
    keep = pc.and_(
        pc.fill_null(pc.not_equal(status, "error"), True), pc.is_finite(table.column("duration_ms").cast(pa.float64()))
    )
    table = table.filter(pc.fill_null(keep, False))
    keys = [(c, "ascending") for c in ("start_time", "trace_id", "span_id") if c in table.column_names]
    return table.sort_by(keys) if keys else table


def window_of(table: pa.Table) -> Window:
    """The ok calls of ``table`` as a :class:`Window`."""
    t = _ok_sorted(table)
    inp, cache, unc = (_floats(t, c) for c in ("input_tokens", "cache_read_tokens", "uncached_input_tokens"))
    cache = np.where(np.isnan(cache) & ~np.isnan(inp) & ~np.isnan(unc), inp - unc, cache)
    inp = np.where(np.isnan(inp), np.nan_to_num(unc) + np.nan_to_num(cache), inp)
    cache_known = bool(t.num_rows) and float(np.mean(np.isfinite(cache))) >= 0.5
    inp = np.maximum(np.nan_to_num(inp), 0.0)
    cached = np.clip(np.nan_to_num(cache), 0.0, inp)
    output = np.maximum(np.nan_to_num(_floats(t, "output_tokens")), 0.0)
    duration, ttft = np.maximum(_floats(t, "duration_ms"), 0.0), _floats(t, "ttft_ms")
    with np.errstate(divide="ignore", invalid="ignore"):
        derived = np.where(output > 1, (duration - ttft) / (output - 1), np.nan)
    itl_obs = _floats(t, "itl_ms")
    routes = {d: _strings(t, d) for d in ROUTE_COLUMNS}
    route_key = np.array(["|".join(v) for v in zip(*(routes[d] for d in ROUTE_COLUMNS), strict=True)], dtype=object)
    start = np.arange(t.num_rows, dtype=float)
    if "start_time" in t.column_names and t.column("start_time").null_count == 0:
        micros = t.column("start_time").cast(pa.timestamp("us")).cast(pa.int64())
        start = np.asarray(micros.to_numpy(zero_copy_only=False), dtype=float) / 1e6
    prompt_key = _strings(t, "prompt_key")
    return Window(
        duration=duration,
        ttft=ttft,
        itl=np.where(np.isfinite(itl_obs), itl_obs, derived),
        queue=_floats(t, "queue_ms"),
        input=inp,
        cached=cached,
        output=output,
        start_s=start,
        routes=routes,
        route_key=route_key if t.num_rows else np.empty(0, dtype=object),
        prompt_key=prompt_key,
        trace_id=_strings(t, "trace_id"),
        span_id=_strings(t, "span_id"),
        cache_known=cache_known,
        has_prompt_key=bool(t.num_rows) and float(np.mean(prompt_key != NULL)) >= 0.5,
    )


def _share_map(values: np.ndarray) -> dict[object, float]:
    uniq, counts = np.unique(values, return_counts=True)
    return dict(zip(uniq.tolist(), (counts / values.size).tolist(), strict=True)) if values.size else {}


def route_tv(base: np.ndarray, epi: np.ndarray) -> float:
    """Total-variation distance between the value mixes of one dimension (0 = same mix, 1 = disjoint)."""
    sb, se = _share_map(base), _share_map(epi)
    if not sb or not se:
        return 0.0
    return 0.5 * sum(abs(sb.get(k, 0.0) - se.get(k, 0.0)) for k in set(sb) | set(se))


def new_value_share(base: np.ndarray, epi: np.ndarray) -> float:
    """Share of episode calls whose value never occurs in the baseline (NULL in both is not new)."""
    if not epi.size or not base.size:
        return 0.0
    return float(np.mean(~np.isin(epi, np.unique(base))))


def stable_route_masks(base: Window, epi: Window, grew_by: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Per call of each window: is it on a stable route, i.e. one with ≥ 1% of the baseline's calls whose share
    did not grow by more than ``grew_by``? Calls on new or grown routes are where a routing change lands."""
    sb, se = _share_map(base.route_key), _share_map(epi.route_key)
    stable = {k for k, s in sb.items() if s >= 0.01 and se.get(k, 0.0) <= s + grew_by}
    return np.isin(base.route_key, list(stable)), np.isin(epi.route_key, list(stable))


def _long_gap_share(w: Window, ttl_s: float) -> float:
    """Share of calls whose previous call on the same prompt key and route came more than ``ttl_s`` earlier.

    A call with no earlier call of its key in the window counts as a long gap when it starts more than ``ttl_s``
    after the window's first call, and is censored (left out) otherwise: its previous call may precede the window.
    """
    if w.n < 2:
        return 0.0
    key = np.char.add(w.prompt_key.astype(str), w.route_key.astype(str))
    order = np.lexsort((w.start_s, key))
    k, t = key[order], w.start_s[order]
    first = np.ones(k.size, dtype=bool)
    first[1:] = k[1:] != k[:-1]
    gap = np.empty_like(t)
    gap[1:] = t[1:] - t[:-1]
    since_start = t - w.start_s[0]
    known = ~first | (since_start > ttl_s)
    long_gap = np.where(first, True, gap > ttl_s)
    return float(np.mean(long_gap[known])) if np.any(known) else 0.0


def gap_shares(base: Window, epi: Window, ttls_s: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """Long-gap shares per TTL for the baseline and the episode window."""
    return [_long_gap_share(base, t) for t in ttls_s], [_long_gap_share(epi, t) for t in ttls_s]


def moved_masks(base: np.ndarray, epi: np.ndarray, by: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Where traffic moved along one route dimension: per baseline call, is its value one that lost more than
    ``by`` of the share (every baseline call when none did); per episode call, is its value one that gained more
    than ``by``."""
    sb, se = _share_map(base), _share_map(epi)
    grown = [k for k, s in se.items() if s > sb.get(k, 0.0) + by]
    left = [k for k, s in sb.items() if s > se.get(k, 0.0) + by] or list(sb)
    return np.isin(base, left), np.isin(epi, grown)
