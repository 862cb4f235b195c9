"""Alerts as code: ``[[alerts.destinations]]`` and ``[[alerts.rules]]`` in the TOML file named by SPANPRISM_CONFIG.

```toml
[[alerts.destinations]]
name = "oncall"
kind = "pagerduty"                 # a registered kind (api/alerts/kinds.py): slack, pagerduty, webhook, …
routing_key = "${PD_ROUTING_KEY}"  # the kind's secret fields are split from its options
source = "spanprism-prod"

[[alerts.rules]]
name = "chat regressions page"
destination = "oncall"             # a destination name (from this file or the API)
series = { service = "chat-*" }
labels = ["cache_eviction", "batch_contention"]
min_change_pct = 25
min_confidence = 0.5
```
``${VAR}`` anywhere in a string is replaced by the environment variable (a missing one is an error naming it).
At start (and before every ``spanprism alerts`` command) the rows with ``origin = 'config'`` are replaced by the
file's; rows created through the API are never touched. Config rows get ids derived from their names, so the
outbox keeps pointing at the same destination across restarts.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from spanprism.api.alerts.destinations import config_id, get_destination, insert_destination
from spanprism.api.alerts.kinds import get_kind, kind_names
from spanprism.api.alerts.rules import Rule, insert_rule
from spanprism.api.storage.database import Database

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """The alerts section cannot be applied (bad shape, unknown destination, missing environment variable)."""


def substitute(value: Any, env: dict[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` in every string of ``value`` (recursively)."""
    env = os.environ if env is None else env
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                raise ConfigError(f"environment variable {m.group(1)} is not set (used in the alerts config)")
            return env[m.group(1)]

        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [substitute(v, env) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, env) for k, v in value.items()}
    return value


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The ``alerts`` section of the TOML file, substituted: ``{"destinations": [...], "rules": [...]}``."""
    with Path(path).open("rb") as fh:
        section = tomllib.load(fh).get("alerts", {})
    if not isinstance(section, dict):
        raise ConfigError("[alerts] must be a table")
    out = {key: section.get(key, []) for key in ("destinations", "rules")}
    for key, items in out.items():
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ConfigError(f"alerts.{key} must be an array of tables ([[alerts.{key}]])")
    return substitute(out, env)


def _split(entry: dict[str, Any]) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    entry = dict(entry)
    name, kind = entry.pop("name", None), entry.pop("kind", None)
    if not name or kind not in kind_names():
        known = list(kind_names())
        raise ConfigError(f"alerts destination needs a name and a kind in {known} (got {name!r}, {kind!r})")
    options, secret = get_kind(kind).split(entry)
    return name, kind, options, secret


def apply(db: Database, section: dict[str, list[dict[str, Any]]]) -> tuple[int, int]:
    """Replace the config-origin destinations and rules with ``section``'s (one transaction); returns counts."""
    with db.state.write() as cur:
        cur.execute("DELETE FROM alert_rules WHERE origin = 'config'")
        cur.execute("DELETE FROM alert_destinations WHERE origin = 'config'")
        for entry in section["destinations"]:
            name, kind, options, secret = _split(entry)
            if get_destination(cur, name) is not None:
                raise ConfigError(f"alerts destination name {name!r} is used twice (or by an API destination)")
            try:
                insert_destination(cur, name=name, kind=kind, options=options, secret=secret, origin="config",
                                   dest_id=config_id(name))  # fmt: skip
            except ValueError as exc:
                raise ConfigError(f"alerts destination {name!r}: {exc}") from exc
        for entry in section["rules"]:
            _insert_rule(cur, entry)
    return len(section["destinations"]), len(section["rules"])


def _insert_rule(cur: Any, entry: dict[str, Any]) -> None:
    name, dest_name = entry.get("name"), entry.get("destination")
    dest = get_destination(cur, str(dest_name)) if dest_name else None
    if not name or dest is None:
        raise ConfigError(f"alerts rule {name!r} needs a name and an existing destination (got {dest_name!r})")
    known = {"name", "destination", "series", "labels", "min_change_pct", "min_confidence", "enabled"}
    if set(entry) - known:
        raise ConfigError(f"alerts rule {name!r} has unknown key(s) {sorted(set(entry) - known)}")
    rule = Rule(id=config_id("rule:" + name), name=name, destination_id=dest.id, series=entry.get("series", {}),
                labels=entry.get("labels", []), min_change_pct=float(entry.get("min_change_pct", 0.0)),
                min_confidence=float(entry.get("min_confidence", 0.0)), enabled=bool(entry.get("enabled", True)),
                origin="config")  # fmt: skip
    try:
        insert_rule(cur, rule)
    except ValueError as exc:
        raise ConfigError(f"alerts rule {name!r}: {exc}") from exc


def sync_from_env(db: Database) -> tuple[int, int] | None:
    """Apply the alerts section of ``$SPANPRISM_CONFIG`` when that file exists; None without a config file.

    A file without an ``[alerts]`` section removes earlier config rows (the file is the source of truth).
    """
    path = os.environ.get("SPANPRISM_CONFIG")
    if not path:
        return None
    return apply(db, load(path))
