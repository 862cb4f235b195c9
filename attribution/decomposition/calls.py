"""Decomposition input: the ok calls of one window as numpy arrays, with tokens resolved and routes keyed.

Rows with ``status = 'error'`` or no duration are left out (an error's latency measures the failure, not the
mechanism). Cache reads: the ``cache_read_tokens`` column, else ``input − uncached`` when both exist, else 0 with the
row counted in ``cache_imputed``. Rows are put in a canonical order (trace_id, span_id, …) so that a decomposition
does not depend on the order the rows arrived in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.models.schema import ROUTE_COLUMNS

NULL_ROUTE = "∅"


@dataclass(frozen=True)
class CallArrays:
    """The numeric view of the ok calls of one window, in a canonical row order (so results ignore input order)."""

    duration: np.ndarray
    ttft: np.ndarray  # NaN where not observable
    itl_obs: np.ndarray  # the itl_ms column, NaN where absent
    queue: np.ndarray
    input: np.ndarray
    cached: np.ndarray
    output: np.ndarray
    route_key: np.ndarray  # object array of route strings
    route_values: np.ndarray  # (n, route dims) object array; NULL as "∅"
    start_s: np.ndarray  # seconds since epoch, NaN where absent
    cache_imputed: int = 0  # rows of the whole window (a subset keeps the window's counts)
    tokens_imputed: int = 0

    @property
    def n(self) -> int:
        return int(self.duration.size)

    @property
    def decode(self) -> np.ndarray:
        """duration − TTFT (never negative; NaN without TTFT)."""
        return np.maximum(self.duration - self.ttft, 0.0)

    @property
    def itl_derived(self) -> np.ndarray:
        """Mean gap after the first token, from decode/(output − 1); NaN when output ≤ 1 or no TTFT."""
        gaps = self.output - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gaps > 0, self.decode / gaps, np.nan)

    def subset(self, mask: np.ndarray) -> CallArrays:
        arrays = {k: getattr(self, k)[mask] for k in _ARRAY_FIELDS}
        return CallArrays(**arrays, cache_imputed=self.cache_imputed, tokens_imputed=self.tokens_imputed)


_ARRAY_FIELDS = (
    "duration",
    "ttft",
    "itl_obs",
    "queue",
    "input",
    "cached",
    "output",
    "route_key",
    "route_values",
    "start_s",
)


def varying_route_dims(*tables: pa.Table) -> list[str]:
    """Route dimensions with more than one distinct value (NULL counts as a value) across the given windows."""
    dims = []
    for dim in ROUTE_COLUMNS:
        values: set[str | None] = set()
        for table in tables:
            if dim in table.column_names:
                values.update(pc.unique(table.column(dim).cast(pa.string())).to_pylist())
            else:
                values.add(None)
        if len(values) > 1:
            dims.append(dim)
    return dims


def _floats(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def _route_values(table: pa.Table, dims: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(route key per call, per-dimension values) over the varying route dimensions."""
    values = np.empty((table.num_rows, len(dims)), dtype=object)
    parts = []
    for j, dim in enumerate(dims):
        col = table.column(dim) if dim in table.column_names else pa.nulls(table.num_rows)
        col = pc.fill_null(col.cast(pa.string()), NULL_ROUTE)
        values[:, j] = col.to_numpy(zero_copy_only=False)
        parts.append(pc.utf8_replace_slice(col, start=0, stop=0, replacement=f"{dim}="))
    if not dims:
        return np.full(table.num_rows, "all", dtype=object), values
    keys = pc.binary_join_element_wise(*parts, "|") if len(parts) > 1 else parts[0]
    return np.asarray(keys.to_numpy(zero_copy_only=False), dtype=object), values


def extract_calls(table: pa.Table, route_dims: list[str]) -> CallArrays:
    """Keep ok calls with a duration, canonically ordered, and resolve tokens (NULL cache → 0, flagged)."""
    status = table.column("status") if "status" in table.column_names else pa.nulls(table.num_rows, pa.string())
    keep = pc.and_(
        pc.fill_null(pc.not_equal(status, "error"), True), pc.is_finite(table.column("duration_ms").cast(pa.float64()))
    )
    keep = pc.fill_null(keep, False)
    table = table.filter(keep)
    sort_keys = [
        (c, "ascending") for c in ("trace_id", "span_id", "start_time", "duration_ms") if c in table.column_names
    ]
    table = table.sort_by(sort_keys)
    inp, cache, unc, out = (
        _floats(table, c) for c in ("input_tokens", "cache_read_tokens", "uncached_input_tokens", "output_tokens")
    )
    cache_missing = np.isnan(cache)
    # A NULL cache read is recovered from input − uncached when both exist, else treated as 0 (and counted).
    cache = np.where(cache_missing & ~np.isnan(inp) & ~np.isnan(unc), inp - unc, cache)
    input_missing = np.isnan(inp)
    inp = np.where(input_missing, np.nan_to_num(unc) + np.nan_to_num(cache), inp)
    cache_imputed = int(np.count_nonzero(np.isnan(cache)))
    tokens_imputed = int(np.count_nonzero(input_missing & np.isnan(unc)) + np.count_nonzero(np.isnan(out)))
    inp = np.maximum(np.nan_to_num(inp), 0.0)
    route_key, route_values = _route_values(table, route_dims)
    start = table.column("start_time") if "start_time" in table.column_names else None
    start_s = (
        np.asarray(start.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=float) / 1e6
        if start is not None and start.null_count == 0
        else np.full(table.num_rows, np.nan)
    )
    return CallArrays(
        duration=np.maximum(_floats(table, "duration_ms"), 0.0),
        ttft=_floats(table, "ttft_ms"),
        itl_obs=_floats(table, "itl_ms"),
        queue=_floats(table, "queue_ms"),
        input=inp,
        cached=np.clip(np.nan_to_num(cache), 0.0, inp),
        output=np.maximum(np.nan_to_num(out), 0.0),
        route_key=route_key,
        route_values=route_values,
        start_s=start_s,
        cache_imputed=cache_imputed,
        tokens_imputed=tokens_imputed,
    )
