"""One delivery attempt: build the request for a destination, POST it, classify the answer.

2xx = sent; 429, 5xx, timeouts and connection errors = retry (exponential backoff with full jitter, ``Retry-After``
honoured); any other 4xx = failed (retrying a request the receiver rejects only repeats the rejection). Errors are
recorded with secrets scrubbed; httpx's own request log lines are redacted to scheme and host (webhook URLs are
secrets: Slack's carries its token in the path).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from spanprism.api.alerts import pagerduty, slack, webhook
from spanprism.api.alerts.destinations import DEFAULT_PAGERDUTY_URL, Destination, mask
from spanprism.api.alerts.render import Links


@dataclass(frozen=True)
class Prepared:
    """A ready request: where, what, with which headers."""

    url: str
    content: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    """What one attempt achieved: ``sent``, ``retry`` (with an optional server-given delay) or ``failed``."""

    status: str
    error: str | None = None
    retry_after_s: float | None = None
    status_code: int | None = None


def prepare(dest: Destination, record: dict[str, Any], event: str, delivery_id: str, links: Links) -> Prepared:
    """The HTTP request for ``record``/``event`` at ``dest`` (its secret must be loaded)."""
    template = dest.options.get("trace_url_template") or links.trace_url_template
    links = Links(links.public_url, template)
    json_headers = {"content-type": "application/json"}
    if dest.kind == "slack":
        return Prepared(dest.secret["url"], orjson.dumps(slack.message(record, event, links)), json_headers)
    if dest.kind == "pagerduty":
        body = pagerduty.event(record, event, dest.secret["routing_key"], links, source=dest.options.get("source"))
        return Prepared(dest.options.get("events_url") or DEFAULT_PAGERDUTY_URL, orjson.dumps(body), json_headers)
    if dest.kind == "webhook":
        urls = links.record_links(str(record.get("id")))
        content = webhook.body({**record, "links": urls} if urls else record, event)
        return Prepared(dest.secret["url"], content,
                        webhook.headers(dest.secret["hmac_secret"], content, delivery_id, event))  # fmt: skip
    raise ValueError(f"unknown destination kind {dest.kind!r}")


def retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_s(attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform(0, min(max, base × 2^(attempts − 1))) after the ``attempts``-th failure."""
    cap = min(max_s, base_s * (2 ** max(0, attempts - 1)))
    return (rng or random).uniform(0.0, cap)


def scrub(text: str, dest: Destination) -> str:
    """``text`` with every secret value of ``dest`` replaced by its mask."""
    for value in dest.secret.values():
        if value:
            text = text.replace(value, mask(value))
    return text


def send(client: httpx.Client, prepared: Prepared, dest: Destination) -> Outcome:
    """POST once and classify the answer."""
    try:
        response = client.post(prepared.url, content=prepared.content, headers=prepared.headers)
    except httpx.TransportError as exc:  # connect refused, timeouts, resets: the receiver may come back
        return Outcome("retry", scrub(f"{type(exc).__name__}: {exc}", dest)[:500])
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # a request that can never be sent as it is
        return Outcome("failed", scrub(f"{type(exc).__name__}: {exc}", dest)[:500])
    code = response.status_code
    if 200 <= code < 300:
        return Outcome("sent", status_code=code)
    error = scrub(f"HTTP {code}: {response.text[:300]}", dest)
    if code == 429 or code >= 500:
        return Outcome("retry", error, retry_after(response.headers.get("retry-after")), code)
    return Outcome("failed", error, status_code=code)


class _RedactURL(logging.Filter):
    """Keep only scheme and host of URLs in httpx's ``HTTP Request: POST <url> …`` lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 2:
            args = list(record.args)
            url = urlsplit(str(args[1]))
            if url.scheme and url.netloc:
                args[1] = f"{url.scheme}://{url.netloc}/****"
                record.args = tuple(args)
        return True


def install_log_redaction() -> None:
    """Redact URLs in the ``httpx`` logger (idempotent)."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactURL) for f in logger.filters):
        logger.addFilter(_RedactURL())
