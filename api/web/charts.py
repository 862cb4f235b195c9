"""Server-side SVG charts: a metric against its baseline band, a sparkline, the waterfall, the route mix.

Pure functions from the panel query answers (``attribution.store.panels``) to SVG text: no chart library, no
script, nothing fetched from the network, and the browser tests can count what was drawn. Every drawn data point
is a ``circle.pt`` with a ``<title>`` (UTC time and value, for hover and screen readers); an episode is a
``rect.episode`` carrying its ``data-start``/``data-end``; a waterfall step is a ``rect.wf-step`` with ``data-ms``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from html import escape
from typing import Any

from spanprism.api.wording import ms

#: Colours of route values in a mix chart (the rest is grey "other"); chosen to stay apart for colour-blind readers.
PALETTE = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377")
OTHER = "#bbbbbb"


def epoch(text: str | None) -> float | None:
    """ISO-8601 (``Z`` or offset) → epoch seconds."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def utc_label(t: float, *, with_date: bool) -> str:
    value = datetime.fromtimestamp(t, UTC)
    return value.strftime("%m-%d %H:%M" if with_date else "%H:%M")


@dataclass(frozen=True)
class Frame:
    """Maps time (epoch s) and value onto the plot area of a ``width`` × ``height`` SVG."""

    t0: float
    t1: float
    y0: float
    y1: float
    width: int = 900
    height: int = 240
    left: int = 64
    right: int = 12
    top: int = 12
    bottom: int = 28

    @cached_property
    def _kx(self) -> float:
        return (self.width - self.left - self.right) / ((self.t1 - self.t0) or 1.0)

    @cached_property
    def _ky(self) -> float:
        return (self.height - self.top - self.bottom) / ((self.y1 - self.y0) or 1.0)

    def x(self, t: float) -> float:
        return round(self.left + (t - self.t0) * self._kx, 1)

    def y(self, v: float) -> float:
        return round(self.height - self.bottom - (v - self.y0) * self._ky, 1)


def _svg(frame: Frame, label: str, body: list[str], cls: str = "chart", extra: str = "") -> str:
    return (f'<svg class="{cls}" viewBox="0 0 {frame.width} {frame.height}" role="img" aria-label="{escape(label)}"'
            f' preserveAspectRatio="none"{extra}>{"".join(body)}</svg>')  # fmt: skip


def _path(frame: Frame, pairs: Sequence[tuple[float, float | None]]) -> str:
    """An SVG path through the pairs, broken where a value is missing."""
    out, pen = [], "M"
    for t, v in pairs:
        if v is None:
            pen = "M"
            continue
        out.append(f"{pen}{frame.x(t)},{frame.y(v)}")
        pen = "L"
    return " ".join(out)


def _series_path(frame: Frame, cls: str, ts: list[float], points: Sequence[dict[str, Any]], field: str) -> str:
    pairs = list(zip(ts, [p.get(field) for p in points], strict=True))
    return f'<path class="{cls}" d="{_path(frame, pairs)}"/>'


def _band(frame: Frame, ts: list[float], lo: list[float | None], hi: list[float | None]) -> list[str]:
    polys, run = [], []
    for t, a, b in [*zip(ts, lo, hi, strict=True), (0.0, None, None)]:
        if a is None or b is None:
            if len(run) > 1:
                pts = [f"{frame.x(t_)},{frame.y(b_)}" for t_, _, b_ in run]
                pts += [f"{frame.x(t_)},{frame.y(a_)}" for t_, a_, _ in reversed(run)]
                polys.append(f'<polygon class="band" points="{" ".join(pts)}"/>')
            run = []
        else:
            run.append((t, a, b))
    return polys


def _axes(frame: Frame, fmt: Callable[[float], str], *, times: bool = True, grid: bool = True) -> list[str]:
    """Value ticks (with grid lines) on the left; UTC time ticks along the bottom when ``times``."""
    out = []
    for i in range(5):
        v = frame.y0 + (frame.y1 - frame.y0) * i / 4
        y = frame.y(v)
        if grid:
            out.append(f'<line class="grid" x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y}" y2="{y}"/>')
        out.append(f'<text class="tick" x="{frame.left - 6}" y="{y + 4}" text-anchor="end">{escape(fmt(v))}</text>')
    return out + (_time_ticks(frame) if times else [])


#: Time-axis tick spacings (seconds): the first that gives at most six ticks is used, on whole multiples (UTC).
TICK_STEPS = (300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)


def _time_ticks(frame: Frame) -> list[str]:
    span = frame.t1 - frame.t0
    step = next((s for s in TICK_STEPS if span / s <= 6), TICK_STEPS[-1])
    with_date = span > 86400
    out, t = [], math.ceil(frame.t0 / step) * step
    while t <= frame.t1:
        out.append(f'<text class="tick" x="{frame.x(t)}" y="{frame.height - 8}" text-anchor="middle">'
                   f"{utc_label(t, with_date=with_date)}</text>")  # fmt: skip
        t += step
    return out


@dataclass(frozen=True)
class Episode:
    """A shaded span on the time axis (an open one runs to the right edge) and, optionally, its link."""

    start: str
    end: str | None
    title: str
    href: str | None = None


def _episodes(frame: Frame, episodes: Sequence[Episode]) -> list[str]:
    out = []
    for ep in episodes:
        s, e = epoch(ep.start) or frame.t0, epoch(ep.end) or frame.t1
        x0, x1 = frame.x(max(s, frame.t0)), frame.x(min(e, frame.t1))
        if x1 < x0:
            continue
        rect = (f'<rect class="episode" x="{x0}" y="{frame.top}" width="{max(x1 - x0, 1.5)}"'
                f' height="{frame.height - frame.top - frame.bottom}" data-start="{escape(ep.start)}"'
                f' data-end="{escape(ep.end or "")}"><title>{escape(ep.title)}</title></rect>')  # fmt: skip
        out.append(f'<a href="{escape(ep.href)}">{rect}</a>' if ep.href else rect)
    return out


def metric_chart(points: Sequence[dict[str, Any]], *, label: str, since: str, until: str,
                 episodes: Sequence[Episode] = (), onset: str | None = None, extra: Sequence[dict[str, Any]] = (),
                 unit: str = "ms", width: int = 900, height: int = 240) -> str:  # fmt: skip
    """The metric (solid, a dot per bucket) against its baseline (dashed) and band, episodes shaded.

    ``extra`` is a second line (e.g. p50 under a p95) drawn without dots or band.
    """
    t0, t1 = epoch(since) or 0.0, epoch(until) or 1.0
    ts = [epoch(p["time"]) or 0.0 for p in points]
    values = [v for p in [*points, *extra] for v in (p.get("value"), p.get("upper"), p.get("baseline"))
              if v is not None]  # fmt: skip
    top = max(values, default=1.0)
    top = 1.0 / 1.08 if unit == "pct" and top <= 1.0 else top  # a share axis ends at 100 %
    fmt = ms if unit == "ms" else (lambda v: f"{100 * v:.0f} %") if unit == "pct" else (lambda v: f"{v:,.0f}")
    frame = Frame(t0, t1, 0.0, top * 1.08 or 1.0, width=width, height=height)
    body = _axes(frame, fmt) + _episodes(frame, episodes)
    body += _band(frame, ts, [p.get("lower") for p in points], [p.get("upper") for p in points])
    body.append(_series_path(frame, "baseline", ts, points, "baseline"))
    if extra:
        pairs = [(epoch(p["time"]) or 0.0, p.get("value")) for p in extra]
        body.append(f'<path class="line2" d="{_path(frame, pairs)}"/>')
    body.append(_series_path(frame, "line", ts, points, "value"))
    if onset and epoch(onset) is not None:
        x = frame.x(epoch(onset) or t0)
        body.append(f'<line class="onset" x1="{x}" x2="{x}" y1="{frame.top}" y2="{frame.height - frame.bottom}"'
                    f' data-time="{escape(onset)}"><title>onset {escape(onset)}</title></line>')  # fmt: skip
    # Bucket times are our own ISO strings ([0-9TZ:-]): nothing in them needs escaping.
    dots = [f'<circle class="pt" cx="{frame.x(t)}" cy="{frame.y(p["value"])}" r="2.2" data-t="{p["time"]}">'
            f"<title>{p['time']}: {fmt(p['value'])}</title></circle>"
            for t, p in zip(ts, points, strict=True) if p.get("value") is not None]  # fmt: skip
    body.append(f'<g class="pts">{"".join(dots)}</g>')
    return _svg(frame, label, body, extra=f' data-since="{escape(since)}" data-until="{escape(until)}"')


def sparkline(points: Sequence[dict[str, Any]], *, label: str, since: str, until: str) -> str:
    """A small line of the metric over its dashed baseline; no axes."""
    ts = [epoch(p["time"]) or 0.0 for p in points]
    values = [v for p in points for v in (p.get("value"), p.get("baseline")) if v is not None]
    frame = Frame(epoch(since) or 0.0, epoch(until) or 1.0, 0.0, max(values, default=1.0) * 1.1 or 1.0, width=160,
                  height=36, left=1, right=1, top=2, bottom=2)  # fmt: skip
    body = [_series_path(frame, "baseline", ts, points, "baseline"), _series_path(frame, "line", ts, points, "value")]
    return _svg(frame, label, body, cls="spark")
