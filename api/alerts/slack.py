"""Slack incoming-webhook messages in Block Kit: one on open, a short follow-up when the regression resolves.

Block Kit limits respected: ≤ 50 blocks, section text ≤ 3000 characters, ≤ 10 section fields of ≤ 2000 characters,
button text ≤ 75 characters, ≤ 25 elements per actions block. ``text`` is the notification fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from spanprism.api.alerts.kinds import JSON_HEADERS, DestinationKind, Prepared
from spanprism.api.alerts.render import Links, metric_line, series_name, summary, top_contributions

if TYPE_CHECKING:
    from spanprism.api.alerts.destinations import Destination


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str, limit: int = 3000) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _clip(text, limit)}


def _button(text: str, url: str, action_id: str) -> dict[str, Any]:
    return {"type": "button", "text": {"type": "plain_text", "text": _clip(text, 75), "emoji": True},
            "url": url, "action_id": action_id}  # fmt: skip


def _trigger_blocks(record: dict[str, Any], links: Links) -> list[dict[str, Any]]:
    cause = f"`{record.get('label')}`" + (f" ({record['reason']})" if record.get("reason") else "")
    fields = [_mrkdwn(f"*Metric*\n{metric_line(record)}", 2000), _mrkdwn(f"*Cause*\n{cause}", 2000),
              _mrkdwn(f"*Confidence*\n{float(record.get('confidence') or 0):.0%}", 2000),
              _mrkdwn(f"*Since*\n{record.get('start')}", 2000)]  # fmt: skip
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": _mrkdwn(f":rotating_light: *Latency regression* in *{series_name(record)}*")},
        {"type": "section", "fields": fields},
    ]
    contributions = top_contributions(record)
    if contributions:
        lines = "\n".join(f"• `{name}` {ms:+,.0f} ms" for name, ms in contributions)
        blocks.append({"type": "section", "text": _mrkdwn(f"*Where the time went*\n{lines}")})
    buttons = [_button(f"Trace {tid[:16]}", url, f"trace-{i}") for i, (tid, url) in enumerate(links.traces(record))]
    api_url = links.regression(str(record.get("id")))
    if api_url:
        buttons.insert(0, _button("Open regression", api_url, "regression"))
    if buttons:
        blocks.append({"type": "actions", "elements": buttons[:25]})
    blocks.append({"type": "divider"})
    blocks.append({"type": "context", "elements": [_mrkdwn(f"spanprism · regression `{record.get('id')}`")]})
    return blocks


def _resolve_blocks(record: dict[str, Any], links: Links) -> list[dict[str, Any]]:
    text = f":white_check_mark: *Resolved*: latency regression in *{series_name(record)}* ({metric_line(record)})"
    blocks: list[dict[str, Any]] = [{"type": "section", "text": _mrkdwn(text)}]
    api_url = links.regression(str(record.get("id")))
    if api_url:
        blocks.append({"type": "actions", "elements": [_button("Open regression", api_url, "regression")]})
    ended = record.get("end") or "now"
    blocks.append({"type": "context", "elements": [_mrkdwn(f"regression `{record.get('id')}` · ended {ended}")]})
    return blocks


def message(record: dict[str, Any], event: str, links: Links) -> dict[str, Any]:
    """The webhook JSON body for ``event`` (``trigger`` or ``resolve``)."""
    blocks = _resolve_blocks(record, links) if event == "resolve" else _trigger_blocks(record, links)
    return {"text": _clip(summary(record, event), 3000), "blocks": blocks[:50]}


def prepare(dest: Destination, record: dict[str, Any], event: str, delivery_id: str, links: Links) -> Prepared:
    """POST the Block Kit message to the incoming-webhook URL (the URL is the secret: it carries the token)."""
    return Prepared(dest.secret["url"], orjson.dumps(message(record, event, links)), dict(JSON_HEADERS))


KIND = DestinationKind(
    name="slack",
    secret_keys=("url",),
    option_keys=("trace_url_template",),
    url_keys=("url",),
    prepare=prepare,
    example={"url": "https://hooks.slack.com/services/T000/B000/XXXX",
             "trace_url_template": "https://tempo.example/trace/{trace_id}"},
)  # fmt: skip
