"""Every registered alert destination kind through the same checks (a river-style conformance suite).

A kind is configured from its own ``example``; the checks are validation (a full config passes, a missing secret
or an unknown field fails), ``prepare`` (an http(s) URL and bytes that decode as the announced content type),
secrets never shown by ``Destination.public()``, config-as-code and the API accepting the kind, and one real
delivery to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from support.receiver import Receiver

from spanprism.api.alerts import config as alerts_config
from spanprism.api.alerts.delivery import prepare, send
from spanprism.api.alerts.destinations import (
    Destination,
    DestinationError,
    get_destination,
    insert_destination,
    list_destinations,
    load_destination,
    validate,
)
from spanprism.api.alerts.kinds import KINDS, get_kind, kind_names
from spanprism.api.alerts.render import SAMPLE_RECORD, Links
from spanprism.api.routers.alerts import Kind
from spanprism.api.storage.database import Database

NAMES = kind_names()
#: content-type → decoder of the wire format (a kind with another format adds its decoder here).
DECODERS: dict[str, Callable[[bytes], Any]] = {"application/json": orjson.loads}
LINKS = Links("https://spanprism.example", "https://tempo.example/trace/{trace_id}")


def _config(name: str, url: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options, secret) of the kind's example; with ``url``, its URL fields point there instead."""
    kind = get_kind(name)
    fields = dict(kind.example)
    if url is not None:
        fields.update((k, url) for k in kind.url_keys)
    return kind.split(fields)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "kinds.duckdb")
    yield database
    database.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


def test_registry_is_what_the_api_and_config_offer():
    assert tuple(KINDS) == NAMES and {"slack", "pagerduty", "webhook"} <= set(NAMES)
    assert get_args(Kind) == NAMES
    with pytest.raises(ValueError, match="unknown destination kind"):
        get_kind("email")


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_complete(name: str):
    kind = get_kind(name)
    assert kind.name == name and kind.secret_keys
    assert not set(kind.secret_keys) & set(kind.option_keys)
    assert set(kind.example) == set(kind.secret_keys) | set(kind.option_keys), "the example is a full config"
    assert kind.url_keys and set(kind.url_keys) <= set(kind.example), "where a destination sends is configured"


@pytest.mark.parametrize("name", NAMES)
def test_validate_accepts_the_full_config_and_rejects_bad_ones(name: str):
    options, secret = _config(name)
    validate(name, options, secret)
    for key in secret:
        with pytest.raises(DestinationError, match=key):
            validate(name, options, {k: v for k, v in secret.items() if k != key})
        with pytest.raises(DestinationError):
            validate(name, options, {**secret, key: ""})
    with pytest.raises(DestinationError, match="unknown option"):
        validate(name, {**options, "colour": "red"}, secret)
    with pytest.raises(DestinationError, match="unknown secret"):
        validate(name, options, {**secret, "password": "x"})
    with pytest.raises(DestinationError, match="unknown kind"):
        validate(name + "-nope", options, secret)
    for key in get_kind(name).url_keys:  # a URL field that is not http(s) is refused, without echoing it
        bad = "ftp://files.example/" + key
        where = (options, {**secret, key: bad}) if key in secret else ({**options, key: bad}, secret)
        with pytest.raises(DestinationError, match="http") as exc:
            validate(name, *where)
        assert bad not in str(exc.value)


def _no_test_hosts(options: Mapping[str, Any], secret: Mapping[str, Any]) -> None:
    if ".invalid" in secret.get("url", ""):
        raise ValueError("secret field 'url' points at a reserved test domain")


#: A scratch kind registered by one line, to show the extra check runs after the generic ones.
SCRATCH = replace(get_kind("slack"), name="scratch", check=_no_test_hosts)


def test_a_kinds_extra_check_runs(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(KINDS, "scratch", f"{__name__}:SCRATCH")
    get_kind.cache_clear()
    try:
        validate("scratch", {}, {"url": "https://hooks.example.com/x"})
        with pytest.raises(DestinationError, match="reserved test domain"):
            validate("scratch", {}, {"url": "https://hooks.example.invalid/x"})
        with pytest.raises(DestinationError, match="http"):  # the generic URL check still comes first
            validate("scratch", {}, {"url": "ftp://hooks.example.invalid/x"})
    finally:
        get_kind.cache_clear()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("event", ["trigger", "resolve"])
def test_prepare_yields_an_http_url_and_its_wire_format(name: str, event: str):
    options, secret = _config(name)
    dest = Destination(id="dst_1", name="n", kind=name, options=options, secret=secret)
    prepared = prepare(dest, SAMPLE_RECORD, event, "dlv_1", LINKS)
    url = urlsplit(prepared.url)
    assert url.scheme in ("http", "https") and url.hostname
    content_type = prepared.headers["content-type"]
    assert isinstance(prepared.content, bytes) and content_type in DECODERS
    assert DECODERS[content_type](prepared.content)
    assert prepare(dest, SAMPLE_RECORD, event, "dlv_1", LINKS).url == prepared.url  # deterministic target


@pytest.mark.parametrize("name", NAMES)
def test_secrets_never_appear_in_public(name: str, db: Database):
    options, secret = _config(name)
    with db.write() as cur:
        dest_id = insert_destination(cur, name=f"{name}-dest", kind=name, options=options, secret=secret)
    with db.read() as cur:
        shown = [d.public() for d in list_destinations(cur)] + [get_destination(cur, dest_id).public()]  # type: ignore[union-attr]
        loaded = load_destination(cur, dest_id)
    assert loaded is not None and loaded.secret == secret and loaded.options == options
    text = json.dumps(shown, default=str) + repr(loaded)
    for value in secret.values():
        assert value not in text
        # nor any long piece of it (a URL's path carries the token)
        assert all(part not in text for part in urlsplit(value).path.split("/") if len(part) > 3)
    assert set(shown[0]["secret"]) == set(secret) and shown[0]["has_secret"]


@pytest.mark.parametrize("name", NAMES)
def test_config_as_code_accepts_the_example(name: str, db: Database):
    table = {"name": f"{name}-cfg", "kind": name, **get_kind(name).example}
    assert alerts_config.apply(db, {"destinations": [table], "rules": []}) == (1, 0)
    options, secret = _config(name)
    with db.read() as cur:
        loaded = load_destination(cur, alerts_config.config_id(f"{name}-cfg"))
    assert loaded is not None and (loaded.kind, loaded.options, loaded.secret) == (name, options, secret)


@pytest.mark.parametrize("name", NAMES)
def test_delivers_to_a_real_receiver(name: str, receiver: Receiver):
    options, secret = _config(name, url=f"{receiver.url}/{name}")
    validate(name, options, secret)
    dest = Destination(id="dst_1", name="n", kind=name, options=options, secret=secret)
    prepared = prepare(dest, SAMPLE_RECORD, "trigger", "dlv_1", LINKS)
    with httpx.Client(timeout=5.0) as client:
        outcome = send(client, prepared, dest)
    assert outcome.status == "sent", outcome.error
    (got,) = receiver.ok()
    assert got["path"] == f"/{name}" and got["body"] == prepared.content
    assert got["headers"]["content-type"] == prepared.headers["content-type"]
