"""What a person reads about a regression: named signals with units, route names, the sentence, the waterfall.

One pure module (record dict in, strings out) that the web pages and ``spanprism explain`` both use, so the
terminal and the browser say the same thing in the same words. Internal classifier features (``feature:…``) are
shown only on request (``debug``): they are the model's inputs, not something an on-call engineer can check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: The mechanisms of ``contributions_ms`` in the order a waterfall draws them, with what each means in words.
MECHANISMS: dict[str, str] = {
    "prefill_growth": "longer uncached prompts",
    "cache_eviction": "prompt-cache misses",
    "batch_contention": "provider batch contention",
    "routing_change": "a routing change",
    "output_growth": "longer completions",
    "residual": "unexplained",
}
LABEL_NAMES: dict[str, str] = {
    "prefill_growth": "prefill growth",
    "cache_eviction": "cache eviction",
    "batch_contention": "batch contention",
    "routing_change": "routing change",
    "output_growth": "output growth",
    "unexplained": "unexplained",
}
REASON_NAMES: dict[str, str] = {
    "user_input_growth": "user inputs grew",
    "system_prompt_growth": "the shared system prompt grew",
    "prompt_changed": "the prompt prefix changed",
    "ttl_expired": "calls got too sparse to keep the cache warm",
    "provider_evicted": "the provider dropped the cached prefix",
    "queueing": "requests queued at the provider",
    "decode_slowdown": "token generation slowed down",
    "region_shift": "traffic moved to another region",
    "deployment_change": "traffic moved to another deployment",
    "model_version_change": "the model snapshot changed",
}
METRIC_NAMES: dict[str, str] = {
    "e2e_p50_ms": "e2e p50", "e2e_p95_ms": "e2e p95", "e2e_p99_ms": "e2e p99", "e2e_gmean_ms": "e2e typical",
    "ttft_p50_ms": "TTFT p50", "ttft_p95_ms": "TTFT p95", "ttft_gmean_ms": "TTFT typical",
    "itl_p50_ms": "ITL p50", "itl_p95_ms": "ITL p95", "itl_gmean_ms": "ITL typical",
}  # fmt: skip
#: Evidence signal → (what it is, unit). Units: ms, tokens, pct (a 0-1 ratio shown in %), rate (calls per hour).
SIGNALS: dict[str, tuple[str, str]] = {
    "uncached_input_tokens_p50": ("uncached prompt tokens, median", "tokens"),
    "input_tokens_p50": ("prompt tokens, median", "tokens"),
    "cache_read_tokens_p50": ("cache-read tokens, median", "tokens"),
    "cache_read_ratio": ("share of prompt tokens read from cache", "pct"),
    "cache_hit_rate": ("calls with a cache hit", "pct"),
    "output_tokens_p50": ("completion tokens, median", "tokens"),
    "itl_p50_ms": ("inter-token latency, median", "ms"),
    "queue_p95_ms": ("provider queue time, p95", "ms"),
    "calls_per_hour": ("calls per hour", "rate"),
    "ttft_residual_p50_ms": ("TTFT the latency model cannot explain, median", "ms"),
    "duration_residual_p50_ms": ("duration the latency model cannot explain, median", "ms"),
    "decomposed_metric": ("the metric over the calls the split was computed on", "ms"),
}
ROUTE_DIMENSIONS: dict[str, str] = {
    "region": "region", "server_address": "endpoint host", "deployment": "deployment",
    "response_model": "response model", "system_fingerprint": "system fingerprint",
}  # fmt: skip


@dataclass(frozen=True)
class EvidenceLine:
    """One evidence row in words: ``name``, ``baseline`` → ``observed`` (``change``); ``signal`` is the raw name."""

    signal: str
    name: str
    baseline: str
    observed: str
    change: str
    kind: str  # "signal", "route" (a route's share), "mix" (a route dimension's mix move), "note", "debug"


def _finite(x: Any) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def ms(x: Any, *, signed: bool = False) -> str:
    """Milliseconds for people: ``640 ms``, ``1.8 s``, ``12,400 ms`` never; ``-`` when unknown."""
    value = _finite(x)
    if value is None:
        return "-"
    sign = "+" if signed and value >= 0 else ""
    if abs(value) >= 1000:
        return f"{sign}{value / 1000:,.1f} s"
    return f"{sign}{value:,.0f} ms" if abs(value) >= 10 else f"{sign}{value:,.1f} ms"


def number(x: Any, unit: str = "") -> str:
    """A value in its unit with thousands separators: ``14,330``, ``62 %``, ``1.2 ms``, ``310 /h``."""
    value = _finite(x)
    if value is None:
        return "-"
    if unit == "ms":
        return ms(value)
    if unit == "pct":
        return f"{100 * value:.0f} %" if abs(value) >= 0.01 or value == 0 else f"{100 * value:.1f} %"
    text = f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:,.1f}"
    return f"{text} /h" if unit == "rate" else text


def change(baseline: Any, observed: Any, unit: str = "") -> str:
    """The move between two values: relative for amounts (``+94 %``), in points for ratios (``-41 pts``)."""
    b, o = _finite(baseline), _finite(observed)
    if b is None or o is None:
        return ""
    if unit == "pct":
        text = f"{100 * (o - b):+.0f} pts"
    elif b <= 0:  # a relative change of a zero or negative value (a model residual) means nothing: say the ms
        return ms(o - b, signed=True) if unit == "ms" else ("new" if o else "±0")
    else:
        text = f"{100 * (o / b - 1):+.0f} %"
    return "±0" + text[2:] if text[1:].startswith("0 ") else text


def metric_name(metric: str | None) -> str:
    return METRIC_NAMES.get(metric or "", (metric or "?").replace("_", " "))


def route_name(route: str) -> str:
    """``region=eastus|deployment=gpt4o-b`` → ``region eastus, deployment gpt4o-b`` (unreported parts dropped)."""
    values = dict(part.partition("=")[::2] for part in str(route).split("|"))
    region = values.get("region") or ""
    parts = []
    for dim, value in values.items():
        if not value or value in ("∅", "<null>", "None"):
            continue
        if dim == "server_address" and region and region in value:  # the host only repeats the region
            continue
        parts.append(f"{ROUTE_DIMENSIONS.get(dim, dim)} {value}")
    return ", ".join(parts) or "unreported route"


def _evidence_line(row: dict[str, Any]) -> EvidenceLine | None:
    signal = str(row.get("signal", ""))
    base, obs = row.get("baseline"), row.get("observed")
    if signal in SIGNALS:
        name, unit = SIGNALS[signal]
        return EvidenceLine(signal, name, number(base, unit), number(obs, unit), change(base, obs, unit), "signal")
    if signal == "route_share":
        name = f"traffic on {route_name(str(row.get('route', '')))}"
        return EvidenceLine(signal, name, number(base, "pct"), number(obs, "pct"), change(base, obs, "pct"), "route")
    if signal.startswith("route_tv_"):
        dim = ROUTE_DIMENSIONS.get(signal[9:], signal[9:])
        return EvidenceLine(signal, f"traffic that changed {dim}", "", number(obs, "pct"), "", "mix")
    if signal.startswith("route_unrecorded_"):
        dim = ROUTE_DIMENSIONS.get(signal[17:], signal[17:])
        return EvidenceLine(signal, f"spans do not record the {dim}: a move along it cannot show", "", "", "", "note")
    if signal.startswith("feature:"):
        return EvidenceLine(signal, signal, number(base), f"{_finite(obs):.4g}" if _finite(obs) is not None else "-",
                            "", "debug")  # fmt: skip
    name = signal.replace("_", " ")  # a signal this module does not know yet: shown, not hidden
    return EvidenceLine(signal, name, number(base), number(obs), change(base, obs), "signal")


def evidence_lines(record: dict[str, Any], *, debug: bool = False) -> list[EvidenceLine]:
    """The record's evidence in words; classifier features only with ``debug``; empty mix moves dropped."""
    lines = [_evidence_line(row) for row in record.get("evidence") or []]
    keep = []
    for line in lines:
        if line is None or (line.kind == "debug" and not debug):
            continue
        if line.kind == "mix" and line.observed in ("0 %", "-"):
            continue
        keep.append(line)
    return keep


def contributions(record: dict[str, Any]) -> list[tuple[str, str, float]]:
    """``(mechanism, words, ms)`` for every mechanism in waterfall order (residual last); missing ones are 0.

    They are the waterfall's steps and sum to the record's observed − baseline: the labelling pass closes them on
    the record (``attribution.decomposition.closing``)."""
    got = record.get("contributions_ms") or {}
    known = [(k, MECHANISMS[k], float(_finite(got.get(k)) or 0.0)) for k in MECHANISMS if k != "residual"]
    other = [(k, k.replace("_", " "), float(_finite(v) or 0.0)) for k, v in got.items() if k not in MECHANISMS]
    return [*known, *other, ("residual", MECHANISMS["residual"], float(_finite(got.get("residual")) or 0.0))]


def cause(record: dict[str, Any]) -> str:
    """``prefill growth: user inputs grew (confidence 87 %)``."""
    label = str(record.get("label") or "unexplained")
    text = LABEL_NAMES.get(label, label.replace("_", " "))
    reason = record.get("reason")
    if reason:
        text += f": {REASON_NAMES.get(str(reason), str(reason).replace('_', ' '))}"
    confidence = _finite(record.get("confidence"))
    return text + (f" (confidence {100 * confidence:.0f} %)" if confidence is not None else "")


def sentence(record: dict[str, Any]) -> str:
    """``TTFT p95 rose 1.8 s (812 ms → 2.6 s, +220 %): 1.3 s is longer uncached prompts, 0.4 s prompt-cache misses.``"""
    base, obs = _finite(record.get("baseline")), _finite(record.get("observed"))
    head = metric_name(record.get("metric"))
    if base is None or obs is None:
        return f"{head} moved; no baseline to compare with."
    verb = "rose" if obs >= base else "fell"
    pct = _finite(record.get("change_pct"))
    moved = f"{head} {verb} {ms(abs(obs - base))} ({ms(base)} → {ms(obs)}" + (f", {pct:+.0f} %)" if pct else ")")
    parts = sorted((c for c in contributions(record) if abs(c[2]) >= max(1.0, 0.05 * abs(obs - base))),
                   key=lambda c: -abs(c[2]))  # fmt: skip
    if not parts:
        return moved + "."
    said = [f"{ms(abs(v))} is {words}" if v >= 0 else f"{words} took back {ms(abs(v))}" for _, words, v in parts]
    return f"{moved}: {', '.join(said)}."


def series_label(record: dict[str, Any]) -> str:
    """``chat-api / openai / gpt-4o / chat`` (and the tenant when the series has one)."""
    s = record.get("series") or {}
    return " / ".join(str(s[k]) for k in ("service", "provider", "model", "operation", "tenant") if s.get(k))


def _when(record: dict[str, Any]) -> str:
    start = (record.get("start") or "?")[:16].replace("T", " ")
    end = record.get("end")
    return f"{start} → {end[:16].replace('T', ' ')} UTC" if end else f"open since {start} UTC"


def _table(rows: list[tuple[str, ...]], widths: tuple[int, ...]) -> list[str]:
    """Left-aligned first column, right-aligned others; the first column is cut to its width (with …)."""
    out = []
    for row in rows:
        first = row[0] if len(row[0]) <= widths[0] else row[0][: widths[0] - 1] + "…"
        cells = [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def explain_text(record: dict[str, Any], *, debug: bool = False) -> str:
    """``spanprism explain``: the sentence, the cause, the waterfall and the evidence; every line ≤ 120 columns."""
    lines = [f"regression {record.get('id')}  {record.get('status')}  {_when(record)}",
             f"series  {series_label(record)}", "", sentence(record), f"cause   {cause(record)}", "",
             "where the extra milliseconds went"]  # fmt: skip
    parts = contributions(record)
    top = max([abs(v) for *_, v in parts] + [1e-9])
    rows = [(f"{words} ({key.replace('_', ' ')})" if key != "residual" else words, ms(v, signed=True),
             "█" * round(24 * abs(v) / top)) for key, words, v in parts]  # fmt: skip
    total = sum(v for *_, v in parts)
    rows.append(("total = observed − baseline", ms(total, signed=True), ""))
    lines += _table(rows, (56, 10, 24))
    lines += ["", "evidence"]
    ev = evidence_lines(record, debug=debug)
    table = [("signal", "baseline", "observed", "change")]
    table += [(e.name, e.baseline, e.observed, e.change) for e in ev if e.kind in ("signal", "route", "mix", "debug")]
    lines += _table(table, (70, 12, 12, 9))
    lines += [f"  note: {e.name}" for e in ev if e.kind == "note"]
    exemplars = record.get("exemplars") or []
    lines += ["", "exemplar traces (trace id / span id)"]
    lines += [f"  {x.get('trace_id')} / {x.get('span_id')}" for x in exemplars] or ["  none"]
    if not debug:
        lines += ["", "internal classifier features: spanprism explain ID --debug"]
    return "\n".join(line[:120] for line in lines)
