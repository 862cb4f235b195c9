"""Text shared by every alert payload: a one-line summary, the top contributions, trace and regression links."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The REST prefix (api.app.API_PREFIX; repeated here because api.app imports this package's router).
API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class Links:
    """Where alert links point: the server as users reach it and a trace viewer URL template."""

    public_url: str | None = None
    trace_url_template: str | None = None

    def regression(self, regression_id: str) -> str | None:
        """The regression's web page (what a person opens from an alert); None without ``public_url``."""
        if not self.public_url:
            return None
        return f"{self.public_url.rstrip('/')}/regressions/{regression_id}"

    def regression_api(self, regression_id: str) -> str | None:
        """The regression's JSON record in the REST API; None without ``public_url``."""
        if not self.public_url:
            return None
        return f"{self.public_url.rstrip('/')}{API_PREFIX}/regressions/{regression_id}"

    def record_links(self, regression_id: str) -> dict[str, str]:
        """``{"page": …, "api": …}`` for a webhook body; empty without ``public_url``."""
        page, api = self.regression(regression_id), self.regression_api(regression_id)
        return {"page": page, "api": api} if page and api else {}

    def traces(self, record: dict[str, Any], limit: int = 3) -> list[tuple[str, str]]:
        """``(trace_id, url)`` of the first exemplars (none without a template)."""
        if not self.trace_url_template:
            return []
        out = []
        for ex in (record.get("exemplars") or [])[:limit]:
            trace_id, span_id = str(ex.get("trace_id", "")), str(ex.get("span_id", ""))
            if trace_id:
                out.append((trace_id, self.trace_url_template.format(trace_id=trace_id, span_id=span_id)))
        return out


def series_name(record: dict[str, Any]) -> str:
    s = record.get("series") or {}
    parts = [s.get(k) for k in ("service", "provider", "model", "operation", "tenant")]
    return " / ".join(str(p) for p in parts if p)


def _num(x: Any) -> str:
    return "?" if x is None else f"{float(x):,.0f}" if abs(float(x)) >= 100 else f"{float(x):,.1f}"


def metric_line(record: dict[str, Any]) -> str:
    """``e2e_p95_ms 812 → 1,650 (+103.2 %)``."""
    change = record.get("change_pct")
    pct = "" if change is None else f" ({change:+.1f} %)"
    return f"{record.get('metric')} {_num(record.get('baseline'))} → {_num(record.get('observed'))}{pct}"


def summary(record: dict[str, Any], event: str) -> str:
    """One line: what moved where, and the attributed cause."""
    if event != "resolve":
        head = "Latency regression"
    else:  # an accepted shift closes the page too, but says it is the new normal rather than recovered
        head = "Accepted as the new normal" if record.get("status") == "accepted" else "Resolved"
    cause = record.get("label") or "unexplained"
    if record.get("reason"):
        cause += f" ({record['reason']})"
    return f"{head}: {series_name(record)} {metric_line(record)}, {cause}"


def top_contributions(record: dict[str, Any], n: int = 4) -> list[tuple[str, float]]:
    """The largest contributions (ms), biggest first; zeros dropped."""
    items = [(k, float(v)) for k, v in (record.get("contributions_ms") or {}).items() if v]
    return sorted(items, key=lambda kv: -abs(kv[1]))[:n]


def severity(change_pct: float | None) -> str:
    """PagerDuty severity from the size of the change: ≥ 100 % critical, ≥ 50 % error, ≥ 20 % warning, else info."""
    change = change_pct or 0.0
    if change >= 100:
        return "critical"
    if change >= 50:
        return "error"
    if change >= 20:
        return "warning"
    return "info"


#: A sample regression record, for ``alerts test`` and ``POST /alerts/destinations/{id}/test``.
SAMPLE_RECORD: dict[str, Any] = {
    "id": "sample-regression", "series": {"service": "chat-api", "provider": "openai", "model": "gpt-4o",
                                          "operation": "chat"},
    "start": "2026-01-01T00:00:00Z", "end": None, "status": "open", "metric": "ttft_p95_ms", "baseline": 812.0,
    "observed": 1650.0, "change_pct": 103.2, "label": "prefill_growth", "reason": "prompt_changed",
    "confidence": 0.87, "contributions_ms": {"prefill_growth": 610.0, "cache_eviction": 35.0,
                                             "batch_contention": 20.0, "routing_change": 0.0, "output_growth": 5.0,
                                             "residual": 168.0},
    "evidence": [{"signal": "uncached_input_tokens_p50", "baseline": 1800, "observed": 5200}],
    "exemplars": [{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}],
}  # fmt: skip
