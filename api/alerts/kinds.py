"""Alert destination kinds: the contract each kind fills in, and the one registry of them.

A kind lives in its own module (``slack.py``, ``pagerduty.py``, ``webhook.py``), which builds its wire payload and
exports ``KIND``, a :class:`DestinationKind`: its secret fields, its option fields, which of them are http(s)
URLs, any extra check, an example configuration and ``prepare`` (a regression record → the HTTP request).
Validation (``destinations``), delivery (``delivery``), the admin API (``routers/alerts``) and alerts-as-code
(``config``) read everything from here, so a new kind is its module plus one line in :data:`KINDS`;
``tests/test_alert_kinds.py`` runs every registered kind through the same checks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spanprism.api.alerts.destinations import Destination
    from spanprism.api.alerts.render import Links

#: name → "module:attribute" of its :class:`DestinationKind`; a module is imported when its kind is first used.
KINDS: dict[str, str] = {
    "slack": "spanprism.api.alerts.slack:KIND",
    "pagerduty": "spanprism.api.alerts.pagerduty:KIND",
    "webhook": "spanprism.api.alerts.webhook:KIND",
}

JSON_HEADERS: Mapping[str, str] = {"content-type": "application/json"}


@dataclass(frozen=True)
class Prepared:
    """A ready request: where, what, with which headers."""

    url: str
    content: bytes
    headers: dict[str, str]


#: ``check(options, secret)`` raises ``ValueError`` (a message that never echoes a secret) for a bad configuration.
Check = Callable[[Mapping[str, Any], Mapping[str, Any]], None]
#: ``prepare(dest, record, event, delivery_id, links)``: the request for ``event`` ("trigger" | "resolve").
Prepare = Callable[["Destination", dict[str, Any], str, str, "Links"], Prepared]


@dataclass(frozen=True)
class DestinationKind:
    """One kind of alert destination.

    ``secret_keys`` are required and the only secret fields allowed; ``option_keys`` are the allowed non-secret
    options; ``url_keys`` (secret or option) must be http(s) URLs, and ``check`` validates anything else.
    ``example`` is a complete configuration as written in ``[[alerts.destinations]]`` (secrets and options in
    one table), used by the conformance test.
    """

    name: str
    secret_keys: tuple[str, ...]
    option_keys: tuple[str, ...]
    url_keys: tuple[str, ...]
    prepare: Prepare
    example: Mapping[str, Any]
    check: Check | None = None

    def split(self, fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A flat table (as in the config file) → (options, secret)."""
        secret = {k: v for k, v in fields.items() if k in self.secret_keys}
        return {k: v for k, v in fields.items() if k not in self.secret_keys}, secret


def kind_names() -> tuple[str, ...]:
    """Every registered kind."""
    return tuple(KINDS)


@cache
def get_kind(name: str) -> DestinationKind:
    """The registered kind ``name`` (imports its module on first use); ValueError for an unknown one."""
    try:
        module_name, attr = KINDS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown destination kind {name!r}; choose from {', '.join(KINDS)}") from None
    kind = getattr(importlib.import_module(module_name), attr)
    if not isinstance(kind, DestinationKind) or kind.name != name:
        raise TypeError(f"{KINDS[name]} is not the DestinationKind {name!r}")
    return kind


def secret_help() -> str:
    """``slack: url; pagerduty: routing_key; …`` — which secret fields each kind needs."""
    return "; ".join(f"{name}: {', '.join(get_kind(name).secret_keys)}" for name in KINDS)
