"""The generic webhook: the DESIGN.md regression record plus ``"event"``, signed with HMAC-SHA256.

Headers: ``X-Spanprism-Timestamp`` (unix seconds) and ``X-Spanprism-Signature: sha256=<hex>`` where the MAC covers
``f"{timestamp}." + body``; ``X-Spanprism-Delivery`` is the outbox row id (the same on every retry, so a receiver
can drop a redelivery after a crash between its 2xx and our bookkeeping). Receivers check with
:func:`verify_signature`, which also rejects timestamps outside ``tolerance_s`` (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

import orjson

from spanprism.api.alerts.kinds import DestinationKind, Prepared

if TYPE_CHECKING:
    from spanprism.api.alerts.destinations import Destination
    from spanprism.api.alerts.render import Links


def body(record: dict[str, Any], event: str) -> bytes:
    """The JSON body: the regression record with ``"event": "trigger" | "resolve"``."""
    return orjson.dumps({**record, "event": event}, option=orjson.OPT_SORT_KEYS)


def sign(secret: str, timestamp: int | str, payload: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(secret: str, payload: bytes, delivery_id: str, event: str, *, now: float | None = None) -> dict[str, str]:
    """Request headers for one delivery attempt (a fresh timestamp per attempt)."""
    ts = int(time.time() if now is None else now)
    return {"content-type": "application/json", "x-spanprism-timestamp": str(ts),
            "x-spanprism-signature": sign(secret, ts, payload), "x-spanprism-delivery": delivery_id,
            "x-spanprism-event": event}  # fmt: skip


def verify_signature(secret: str, timestamp: str | int, body: bytes, signature: str, tolerance_s: float = 300.0,
                     *, now: float | None = None) -> bool:  # fmt: skip
    """True when ``signature`` is ours over ``timestamp`` and ``body`` and the timestamp is within ``tolerance_s``.

    Use it in a receiver: ``verify_signature(secret, request.headers["X-Spanprism-Timestamp"], raw_body,
    request.headers["X-Spanprism-Signature"])``. The comparison is constant-time.
    """
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


def prepare(dest: Destination, record: dict[str, Any], event: str, delivery_id: str, links: Links) -> Prepared:
    """POST the signed record to the receiver's URL, with ``links`` to its web page and API record when known."""
    urls = links.record_links(str(record.get("id")))
    content = body({**record, "links": urls} if urls else record, event)
    return Prepared(dest.secret["url"], content, headers(dest.secret["hmac_secret"], content, delivery_id, event))


KIND = DestinationKind(
    name="webhook",
    secret_keys=("url", "hmac_secret"),
    option_keys=("trace_url_template",),
    url_keys=("url",),
    prepare=prepare,
    example={"url": "https://alerts.example.com/spanprism", "hmac_secret": "whsec-0123456789abcdef",
             "trace_url_template": "https://tempo.example/trace/{trace_id}"},
)  # fmt: skip
