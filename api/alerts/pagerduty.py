"""PagerDuty Events API v2: ``trigger`` on open, ``resolve`` on recovery, ``dedup_key`` = the regression id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from spanprism.api.alerts.kinds import JSON_HEADERS, DestinationKind, Prepared
from spanprism.api.alerts.render import Links, severity, summary, top_contributions

if TYPE_CHECKING:
    from spanprism.api.alerts.destinations import Destination

DEFAULT_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


def event(record: dict[str, Any], action: str, routing_key: str, links: Links, *,
          source: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The enqueue body. A resolve carries only routing_key, event_action and dedup_key (as the API asks)."""
    dedup_key = str(record["id"])
    if action == "resolve":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}
    series = record.get("series") or {}
    source = source or series.get("service") or "spanprism"
    details = {"label": record.get("label"), "reason": record.get("reason"), "confidence": record.get("confidence"),
               "metric": record.get("metric"), "baseline": record.get("baseline"),
               "observed": record.get("observed"), "change_pct": record.get("change_pct"),
               "contributions_ms": dict(top_contributions(record, n=10)), "series": series,
               "exemplars": (record.get("exemplars") or [])[:5]}  # fmt: skip
    body: dict[str, Any] = {
        "routing_key": routing_key, "event_action": "trigger", "dedup_key": dedup_key,
        "payload": {"summary": summary(record, "trigger")[:1024], "source": source,
                    "severity": severity(record.get("change_pct")), "timestamp": record.get("start"),
                    "component": series.get("model"), "group": series.get("provider"),
                    "class": record.get("label"), "custom_details": details},
        "client": "spanprism",
    }  # fmt: skip
    link_list = [{"href": url, "text": f"trace {tid}"} for tid, url in links.traces(record)]
    api_url = links.regression(dedup_key)
    if api_url:
        body["client_url"] = api_url
        link_list.insert(0, {"href": api_url, "text": "regression in spanprism"})
    if link_list:
        body["links"] = link_list
    return body


def prepare(dest: Destination, record: dict[str, Any], action: str, delivery_id: str, links: Links) -> Prepared:
    """POST the event to ``events_url`` (default: PagerDuty's); the routing key is the secret."""
    body = event(record, action, dest.secret["routing_key"], links, source=dest.options.get("source"))
    return Prepared(dest.options.get("events_url") or DEFAULT_EVENTS_URL, orjson.dumps(body), dict(JSON_HEADERS))


KIND = DestinationKind(
    name="pagerduty",
    secret_keys=("routing_key",),
    option_keys=("events_url", "source", "trace_url_template"),
    url_keys=("events_url",),
    prepare=prepare,
    example={"routing_key": "R0UT1NGKEY0123456789abcdef01234", "events_url": DEFAULT_EVENTS_URL,
             "source": "spanprism-prod", "trace_url_template": "https://tempo.example/trace/{trace_id}"},
)  # fmt: skip
