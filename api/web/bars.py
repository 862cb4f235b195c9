"""Bar charts as SVG: the waterfall of ``contributions_ms`` and the route mix over time.

The waterfall starts at the record's baseline, adds one floating bar per mechanism (``rect.wf-step`` with
``data-ms``) and ends at the record's observed value: the stored contributions sum to observed − baseline (the
labelling pass closes them on the record; ``residual`` is what no named mechanism explains).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from html import escape
from typing import Any

from spanprism.api.web.charts import OTHER, PALETTE, Frame, _axes, _svg, epoch
from spanprism.api.wording import contributions, ms


def waterfall(record: dict[str, Any], *, width: int = 900, height: int = 260) -> str:
    """Baseline bar, a step per mechanism (up red, down green), the observed bar; labels under each bar."""
    base = float(record.get("baseline") or 0.0)
    steps = contributions(record)
    levels, level = [base], base
    for *_, v in steps:
        level += v
        levels.append(level)
    observed = float(record.get("observed") or level)  # = level: the contributions close on the record
    top = max([*levels, observed, 1.0]) * 1.1
    n = len(steps) + 2
    frame = Frame(0, n, 0.0, top, width=width, height=height, bottom=44)
    slot = (width - frame.left - frame.right) / n
    body = _axes(frame, ms, times=False)

    def bar(i: int, lo: float, hi: float, cls: str, title: str, extra: str = "") -> str:
        x, y = frame.left + i * slot + slot * 0.18, frame.y(max(lo, hi))
        h = max(abs(frame.y(lo) - frame.y(hi)), 1.0)
        return (f'<rect class="{cls}" x="{x:.1f}" y="{y}" width="{slot * 0.64:.1f}" height="{h:.1f}"{extra}>'
                f"<title>{escape(title)}</title></rect>")  # fmt: skip

    def caption(i: int, text: str, value: str) -> str:
        x = frame.left + (i + 0.5) * slot
        return (
            f'<text class="tick" x="{x:.1f}" y="{height - 26}" text-anchor="middle">{escape(text)}</text>'
            f'<text class="tick" x="{x:.1f}" y="{height - 12}" text-anchor="middle">{escape(value)}</text>'
        )

    body += [bar(0, 0.0, base, "wf-total", f"baseline {ms(base)}"), caption(0, "baseline", ms(base))]
    for i, ((key, words, v), lo) in enumerate(zip(steps, levels, strict=False), start=1):
        cls = "wf-step up" if v >= 0 else "wf-step down"
        body.append(bar(i, lo, lo + v, cls, f"{words}: {ms(v, signed=True)}", f' data-ms="{v:.3f}" data-key="{key}"'))
        body.append(caption(i, key.replace("_", " "), ms(v, signed=True)))
    body += [
        bar(n - 1, 0.0, observed, "wf-total", f"observed {ms(observed)}"),
        caption(n - 1, "observed", ms(observed)),
    ]
    return _svg(frame, "where the extra milliseconds went", body, cls="chart waterfall")


def route_mix_chart(rows: Sequence[dict[str, Any]], dimension: str, *, since: str, until: str, step_s: int,
                    width: int = 900, height: int = 120) -> tuple[str, list[tuple[str, str]]]:  # fmt: skip
    """Stacked shares per time step of one route dimension; returns the SVG and its legend ``(colour, value)``."""
    mine = [r for r in rows if r["dimension"] == dimension]
    totals: dict[str, int] = defaultdict(int)
    for r in mine:
        totals[r["value"]] += r["calls"]
    top = sorted(totals, key=lambda v: (-totals[v], v))[: len(PALETTE)]
    colour = {v: PALETTE[i] for i, v in enumerate(top)}
    frame = Frame(epoch(since) or 0.0, epoch(until) or 1.0, 0.0, 1.0, width=width, height=height, left=64, bottom=22)
    by_time: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in mine:
        by_time[r["time"]].append(r)
    body = []
    for t, items in by_time.items():
        x0 = frame.x(epoch(t) or 0.0)
        w = max(frame.x((epoch(t) or 0.0) + step_s) - x0 - 0.5, 0.8)
        acc = 0.0
        for r in sorted(items, key=lambda r: top.index(r["value"]) if r["value"] in colour else len(top)):
            fill = colour.get(r["value"], OTHER)
            y_hi, y_lo = frame.y(acc + r["share"]), frame.y(acc)
            body.append(f'<rect x="{x0}" y="{y_hi}" width="{w:.1f}" height="{max(y_lo - y_hi, 0.3):.1f}"'
                        f' fill="{fill}"><title>{escape(t)} {escape(r["value"] or "unreported")}:'
                        f" {100 * r['share']:.0f} %</title></rect>")  # fmt: skip
            acc += r["share"]
    axes = _axes(frame, lambda v: f"{100 * v:.0f} %", grid=False)
    legend = [(colour[v], v or "unreported") for v in top]
    if len(totals) > len(top):
        legend.append((OTHER, "other"))
    return _svg(frame, f"route mix by {dimension}", axes + body, cls="chart mix"), legend
