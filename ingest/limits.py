"""What one input may weigh and what one stored call may hold: the ingest limits, and the bounds check on rows.

:class:`Limits` is picklable (it travels to decode worker processes) and built from settings at the edges
(``Settings.ingest_limits()``); its defaults apply wherever no settings are at hand (re-drive, tests).

Input caps (checked by the framer while reading): inflated bytes of one compressed input and records per input.
Row bounds (:func:`bound_rows`, checked on the normalized Arrow table, vectorized, so the common all-good table
costs a few column scans): every text column at most ``max_string_chars`` characters — longer values are cut
with a marker (``oversize_strings="truncate"``) or the call is quarantined (``"quarantine"``) — and ``start_time``
inside a plausible window around now; a call outside it is quarantined with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from spanprism.ingest.records import Quarantined, SpanRecord

__all__ = ["TRUNCATED_MARK", "Limits", "bound_rows"]

#: Appended to a value cut at ``max_string_chars``: a cut value stays recognisable and never equals a real one.
TRUNCATED_MARK = "…[truncated]"


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on one input and bounds on one call (see the module docstring)."""

    max_decompressed_bytes: int | None = 4 << 30
    max_records: int | None = 10_000_000
    max_string_chars: int = 1024
    oversize_strings: Literal["truncate", "quarantine"] = "truncate"
    max_age_days: float = 3650.0
    max_future_hours: float = 24.0

    def window(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """The plausible ``start_time`` range [earliest, latest] around ``now``."""
        now = now or datetime.now(UTC)
        return now - timedelta(days=self.max_age_days), now + timedelta(hours=self.max_future_hours)


def _string_columns(table: pa.Table) -> list[str]:
    return [f.name for f in table.schema if pa.types.is_string(f.type)]


def _too_long(table: pa.Table, limit: int) -> dict[str, pa.Array]:
    """Per text column with a value over ``limit`` characters: the boolean mask of those rows."""
    found = {}
    for name in _string_columns(table):
        lengths = pc.utf8_length(table[name])
        if (pc.max(lengths).as_py() or 0) > limit:
            found[name] = pc.fill_null(pc.greater(lengths, limit), False)
    return found


def _out_of_window(table: pa.Table, limits: Limits, now: datetime | None) -> pa.Array | None:
    """Mask of rows whose ``start_time`` is outside the window, or None when every row is inside."""
    if "start_time" not in table.column_names or not table.num_rows:
        return None
    earliest, latest = (int(t.timestamp() * 1e6) for t in limits.window(now))
    micros = table["start_time"].cast(pa.int64())  # as integers: year 2554 (or 294247) has no datetime
    span = pc.min_max(micros).as_py()
    if span["min"] is None or (earliest <= span["min"] and span["max"] <= latest):
        return None
    return pc.fill_null(pc.or_(pc.less(micros, earliest), pc.greater(micros, latest)), False)


def _truncate(table: pa.Table, column: str, limit: int) -> pa.Table:
    keep = max(0, limit - len(TRUNCATED_MARK))
    values = table[column]
    lengths = pc.utf8_length(values)
    cut = pc.binary_join_element_wise(pc.utf8_slice_codeunits(values, 0, keep), TRUNCATED_MARK, "")
    bounded = pc.if_else(pc.greater(lengths, limit), cut, values)
    return table.set_column(table.column_names.index(column), column, bounded)


def bound_rows(table: pa.Table, spans: Sequence[SpanRecord], limits: Limits, now: datetime | None = None
               ) -> tuple[pa.Table, list[Quarantined]]:  # fmt: skip
    """Apply the row bounds to ``table`` (row i normalized from ``spans[i]``): (kept rows, quarantined spans)."""
    reasons: dict[int, str] = {}
    long_values = _too_long(table, limits.max_string_chars)
    for name, mask in long_values.items():
        if limits.oversize_strings == "quarantine":
            for i in pc.indices_nonzero(mask).to_pylist():
                size = len(table[name][i].as_py())
                reasons.setdefault(i, f"{name} of {size} characters exceeds max_string_chars "
                                      f"({limits.max_string_chars})")  # fmt: skip
        else:
            table = _truncate(table, name, limits.max_string_chars)
    outside = _out_of_window(table, limits, now)
    if outside is not None:
        earliest, latest = limits.window(now)
        for i in pc.indices_nonzero(outside).to_pylist():
            start_ns = spans[i]["start_ns"]
            reasons.setdefault(i, f"start time {start_ns} ns is outside the accepted window "
                                  f"{earliest:%Y-%m-%d} .. {latest:%Y-%m-%d %H:%M} UTC "
                                  "(max_span_age_days, max_span_future_hours)")  # fmt: skip
    if not reasons:
        return table, []
    keep = pa.array([i not in reasons for i in range(table.num_rows)])
    bad = [Quarantined(spans[i]["source"], spans[i]["location"], why, spans[i]["raw"]()) for i, why in
           sorted(reasons.items())]  # fmt: skip
    return table.filter(keep), bad
