"""One window of LLM calls as numpy arrays: the one shape the decomposition, the features and the exemplars read.

:func:`window_of` is built once per window (per regression: its baseline and its episode) from the ``llm_calls``
rows the store returns, and then passed to every consumer:

* **which calls**: the ok calls (not ``status = 'error'``, with a finite duration); an error's latency measures the
  failure, not the mechanism;
* **tokens resolved once**: a NULL cache read is ``input − uncached`` when both exist, else 0 (counted in
  ``cache_imputed``); a NULL input is ``uncached + cache``; cache reads are clipped to the prompt;
* **row order**: time order (ties by trace and span id), so that nothing depends on the order rows arrived in. The
  decomposition pairs calls with a seeded coupling whose outcome depends on row order, and its results are pinned
  by golden files in *its* canonical order (trace id, span id, start, duration): :attr:`CallWindow.by_id` is that
  permutation;
* **routes**: every route dimension as strings, NULL as :data:`NULL_MARK`; :attr:`CallWindow.route_domain` keeps
  each dimension's values over *all* rows, errors included, since that decides which dimensions the decomposition
  keys its routes by (:func:`varying_route_dims`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.models.schema import ROUTE_COLUMNS

#: How a NULL string (route value, prompt key, id) reads in a window.
NULL_MARK = "∅"
#: The decomposition's canonical row order.
ID_ORDER = ("trace_id", "span_id", "start_time", "duration_ms")
#: A window's own row order.
TIME_ORDER = ("start_time", "trace_id", "span_id")


@dataclass(frozen=True)
class CallWindow:
    """The ok calls of one window, in time order; per-call arrays plus window-level facts (kept by :meth:`take`)."""

    duration: np.ndarray
    ttft: np.ndarray  # NaN where not observable
    itl_obs: np.ndarray  # the itl_ms column, NaN where absent
    itl: np.ndarray  # observed mean ITL, else (duration − TTFT) / (output − 1), unclamped (see itl_derived)
    queue: np.ndarray
    input: np.ndarray
    cached: np.ndarray
    output: np.ndarray
    start_s: np.ndarray  # seconds since epoch; the row number when some start time is missing (start_known False)
    routes: dict[str, np.ndarray]  # every route dimension, NULL as NULL_MARK
    route_key: np.ndarray  # all route dimensions joined by "|"
    prompt_key: np.ndarray
    trace_id: np.ndarray
    span_id: np.ndarray
    by_id: np.ndarray  # permutation of the rows into the decomposition's order (ID_ORDER)
    route_domain: dict[str, frozenset[str | None]]  # values per route dimension over all rows (None for NULL)
    start_known: bool
    cache_known: bool  # at least half the calls know their cache reads
    has_prompt_key: bool  # at least half the calls carry a prompt key
    cache_imputed: int = 0  # calls whose cache read was unknown and taken as 0
    tokens_imputed: int = 0  # unknown input (without uncached) plus unknown output counts

    @property
    def n(self) -> int:
        return int(self.duration.size)

    @property
    def uncached(self) -> np.ndarray:
        return self.input - self.cached

    @property
    def decode(self) -> np.ndarray:
        """duration − TTFT (never negative; NaN without TTFT)."""
        return np.maximum(self.duration - self.ttft, 0.0)

    @property
    def itl_derived(self) -> np.ndarray:
        """The decomposition's mean gap after the first token: decode/(output − 1), NaN when output ≤ 1 or no TTFT.

        Unlike :attr:`itl` it reads the clamped :attr:`decode`: the latency model must never see a negative rate.
        """
        gaps = self.output - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gaps > 0, self.decode / gaps, np.nan)

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

    def take(self, index: np.ndarray) -> CallWindow:
        """The calls at ``index`` (positions or a boolean mask), in that order; window-level facts stay."""
        idx = np.flatnonzero(index) if index.dtype == bool else np.asarray(index, dtype=np.intp)
        rank = np.empty(self.n, dtype=np.intp)
        rank[self.by_id] = np.arange(self.n)
        arrays = {f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name in _PER_CALL}
        routes = {d: v[idx] for d, v in self.routes.items()}
        return replace(self, **arrays, routes=routes, by_id=np.argsort(rank[idx], kind="stable"))

    def in_id_order(self) -> CallWindow:
        """The same calls in the decomposition's canonical order (:data:`ID_ORDER`)."""
        return self.take(self.by_id)

    def route_key_over(self, dims: list[str]) -> np.ndarray:
        """Per call, ``dim=value|…`` over ``dims`` only (``"all"`` without any): the decomposition's route."""
        if not dims:
            return np.full(self.n, "all", dtype=object)
        key = f"{dims[0]}=" + self.routes[dims[0]]
        for dim in dims[1:]:
            key = key + f"|{dim}=" + self.routes[dim]
        return np.asarray(key, dtype=object)


_PER_CALL = frozenset(
    {"duration", "ttft", "itl_obs", "itl", "queue", "input", "cached", "output", "start_s", "route_key"}
    | {"prompt_key", "trace_id", "span_id"}
)


def varying_route_dims(*windows: CallWindow) -> list[str]:
    """Route dimensions with more than one distinct value (NULL counts as a value) across the given windows."""
    return [d for d in ROUTE_COLUMNS if len(frozenset().union(*(w.route_domain[d] for w in windows))) > 1]


def _floats(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def _strings(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, NULL_MARK, dtype=object)
    col = pc.fill_null(table.column(name).cast(pa.string()), NULL_MARK)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)


def _domain(table: pa.Table) -> dict[str, frozenset[str | None]]:
    """Distinct values per route dimension over every row (a missing column is all NULL)."""
    out: dict[str, frozenset[str | None]] = {}
    for d in ROUTE_COLUMNS:
        present = d in table.column_names
        out[d] = frozenset(pc.unique(table.column(d).cast(pa.string())).to_pylist()) if present else frozenset({None})
    return out


def _ok_calls(table: pa.Table) -> pa.Table:
    status = table.column("status") if "status" in table.column_names else pa.nulls(table.num_rows, pa.string())
    keep = pc.and_(
        pc.fill_null(pc.not_equal(status, "error"), True), pc.is_finite(table.column("duration_ms").cast(pa.float64()))
    )
    return table.filter(pc.fill_null(keep, False))


def _order(table: pa.Table, keys: tuple[str, ...]) -> np.ndarray:
    # sort_indices is a stable sort, so fully tied rows keep their relative input order in both orders.
    present = [(c, "ascending") for c in keys if c in table.column_names]
    if not present:
        return np.arange(table.num_rows)
    return np.asarray(pc.sort_indices(table, sort_keys=present).to_numpy(zero_copy_only=False), dtype=np.intp)


def _by_id(table: pa.Table, time_order: np.ndarray) -> np.ndarray:
    """Positions, in the time-ordered window, of the rows in ID_ORDER."""
    position = np.empty(table.num_rows, dtype=np.intp)
    position[time_order] = np.arange(table.num_rows)
    return position[_order(table, ID_ORDER)]


def _tokens(t: pa.Table) -> dict[str, object]:
    """Input, cache-read and output tokens with the NULL rules of the module docstring, and the imputed counts."""
    inp, cache, unc, out = (
        _floats(t, c) for c in ("input_tokens", "cache_read_tokens", "uncached_input_tokens", "output_tokens")
    )
    # A NULL cache read is recovered from input − uncached when both exist, else treated as 0 (and counted).
    cache = np.where(np.isnan(cache) & ~np.isnan(inp) & ~np.isnan(unc), inp - unc, cache)
    input_missing = np.isnan(inp)
    inp = np.where(input_missing, np.nan_to_num(unc) + np.nan_to_num(cache), inp)
    inp = np.maximum(np.nan_to_num(inp), 0.0)
    return {
        "input": inp,
        "cached": np.clip(np.nan_to_num(cache), 0.0, inp),
        "output": np.maximum(np.nan_to_num(out), 0.0),
        "cache_known": bool(t.num_rows) and float(np.mean(np.isfinite(cache))) >= 0.5,
        "cache_imputed": int(np.count_nonzero(np.isnan(cache))),
        "tokens_imputed": int(np.count_nonzero(input_missing & np.isnan(unc)) + np.count_nonzero(np.isnan(out))),
    }


def _start_seconds(t: pa.Table) -> tuple[np.ndarray, bool]:
    """Start times in epoch seconds, or the row numbers (and False) when any start time is missing."""
    if "start_time" not in t.column_names or t.column("start_time").null_count:
        return np.arange(t.num_rows, dtype=float), False
    micros = t.column("start_time").cast(pa.timestamp("us")).cast(pa.int64())
    return np.asarray(micros.to_numpy(zero_copy_only=False), dtype=float) / 1e6, True


def window_of(table: pa.Table) -> CallWindow:
    """The ok calls of ``table`` (``llm_calls`` rows; missing columns read as NULL) as a :class:`CallWindow`."""
    ok = _ok_calls(table)
    time_order = _order(ok, TIME_ORDER)
    t = ok.take(time_order)
    tokens = _tokens(t)
    duration, ttft, itl_obs = np.maximum(_floats(t, "duration_ms"), 0.0), _floats(t, "ttft_ms"), _floats(t, "itl_ms")
    with np.errstate(divide="ignore", invalid="ignore"):
        derived = np.where(tokens["output"] > 1, (duration - ttft) / (tokens["output"] - 1), np.nan)
    routes = {d: _strings(t, d) for d in ROUTE_COLUMNS}
    route_key = np.array(["|".join(v) for v in zip(*routes.values(), strict=True)], dtype=object)
    start_s, start_known = _start_seconds(t)
    prompt_key = _strings(t, "prompt_key")
    return CallWindow(
        duration=duration,
        ttft=ttft,
        itl_obs=itl_obs,
        itl=np.where(np.isfinite(itl_obs), itl_obs, derived),
        queue=_floats(t, "queue_ms"),
        start_s=start_s,
        routes=routes,
        route_key=route_key if t.num_rows else np.empty(0, dtype=object),
        prompt_key=prompt_key,
        trace_id=_strings(t, "trace_id"),
        span_id=_strings(t, "span_id"),
        by_id=_by_id(ok, time_order),
        route_domain=_domain(table),
        start_known=start_known,
        has_prompt_key=bool(t.num_rows) and float(np.mean(prompt_key != NULL_MARK)) >= 0.5,
        **tokens,  # type: ignore[arg-type]
    )
