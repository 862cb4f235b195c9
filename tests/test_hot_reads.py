"""The thin path of the dashboard lists (api/hot_reads.py) on a live server: the route's bytes for every query variant,
the route's auth (401/403, revocation, read_open), ETag/304, gzip, and answers dropped when the data changes."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import pytest
from conftest import Live, live_server
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from support.otlp_spans import genai_spans
from support.world import AT, serve_world

from spanprism.api.hot_reads import accepts_gzip, etag_matches

API = "/api/v1"
IDENTITY = {"accept-encoding": "identity"}
VARIANTS = [
    ("/series", {}),
    ("/series", {"until": AT.isoformat()}),
    ("/series", {"until": AT.isoformat(), "limit": 2}),
    ("/series", {"limit": 2, "offset": 2}),
    ("/series", {"limit": 5000}),  # clamped to max_page_size by the route
    ("/series", {"provider": "no-such-provider"}),
    ("/series", {"until": "2026-11-01T00:00:00Z"}),
    ("/regressions", {}),
    ("/regressions", {"limit": 1}),
    ("/regressions", {"status": "open", "limit": 3, "offset": 1}),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    with serve_world(tmp_path_factory, "hot-reads") as server:
        yield server


def _route_only(live: Live, on: bool) -> None:
    """Turn the thin path off (every request through the route) or back on, on the running app."""
    live.app.state.settings = live.settings.model_copy(update={"hot_reads": not on})


def _get(client: httpx.Client, path: str, params: dict | None = None, **headers: str) -> httpx.Response:
    return client.get(API + path, params=params or {}, headers={**IDENTITY, **headers})


def test_every_variant_answers_the_routes_bytes(live):
    _route_only(live, True)
    try:
        expected = [_get(live.client, path, params) for path, params in VARIANTS]
    finally:
        _route_only(live, False)
    for (path, params), want in zip(VARIANTS, expected, strict=True):
        assert want.status_code == 200 and "etag" not in want.headers, (path, params)
        first, again = _get(live.client, path, params), _get(live.client, path, params)  # captured, then a hit
        for got in (first, again):
            assert got.status_code == 200
            assert got.content == want.content, (path, params)
            assert got.headers["content-type"] == want.headers["content-type"]
            assert got.headers["content-length"] == str(len(want.content))
        assert first.headers["etag"] == again.headers["etag"]
    etags = {_get(live.client, path, params).headers["etag"] for path, params in VARIANTS}
    assert len(etags) == len({_get(live.client, p, q).content for p, q in VARIANTS})  # one tag per distinct body


def test_invalid_parameters_still_get_the_routes_422(live):
    for params in ({"limit": 0}, {"until": "not-a-time"}, {"offset": -1}):
        for _ in range(2):
            got = _get(live.client, "/series", params)
            assert got.status_code == 422 and "etag" not in got.headers
    assert _get(live.client, "/regressions", {"status": "nope"}).status_code == 422


def test_auth_is_the_routes_own(live):
    assert _get(live.client, "/series").status_code == 200  # an answer is cached before the refused asks
    for path in ("/series", "/regressions"):
        with live.as_key(None) as anon:
            refused = _get(anon, path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json() == {"detail": "an API key is required (Authorization: Bearer KEY)"}
        with live.as_key("spk_00000000_not-a-key") as bad:
            refused = _get(bad, path)
        assert refused.status_code == 401 and refused.json() == {"detail": "unknown or revoked API key"}
    made = live.client.post(API + "/keys", json={"name": "ingest-only", "scopes": ["ingest"]}).json()
    with live.as_key(made["key"]) as ingest_only:
        refused = _get(ingest_only, "/series")
    assert refused.status_code == 403 and refused.json() == {"detail": "this key lacks the 'read' scope"}


def test_a_revoked_key_is_refused_at_once(live):
    made = live.client.post(API + "/keys", json={"name": "dashboard", "scopes": ["read"]}).json()
    with live.as_key(made["key"]) as reader:
        assert _get(reader, "/series").status_code == 200
        assert _get(reader, "/series").status_code == 200  # a hit: the key is in the principal cache now
        assert live.client.delete(f"{API}/keys/{made['id']}").status_code == 204
        refused = _get(reader, "/series")
        assert refused.status_code == 401 and refused.json() == {"detail": "unknown or revoked API key"}


def test_read_open_serves_the_cached_list_without_a_key(tmp_path_factory):
    with serve_world(tmp_path_factory, "hot-open", read_open=True) as live, live.as_key(None) as anon:
        first, again = _get(anon, "/series"), _get(anon, "/series")
        assert first.status_code == again.status_code == 200 and first.content == again.content
        assert again.headers["etag"] == first.headers["etag"]
        assert live.client.get(API + "/keys").status_code == 200 and anon.get(API + "/keys").status_code == 401


def test_a_matching_etag_gets_304(live):
    got = _get(live.client, "/series", {"limit": 3})
    tag = got.headers["etag"]
    for sent in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        same = _get(live.client, "/series", {"limit": 3}, **{"if-none-match": sent})
        assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == tag, sent
    other = _get(live.client, "/series", {"limit": 3}, **{"if-none-match": '"stale"'})
    assert other.status_code == 200 and other.content == got.content
    with live.as_key(None) as anon:  # a validator is no credential
        assert _get(anon, "/series", {"limit": 3}, **{"if-none-match": tag}).status_code == 401


def test_gzip_round_trips(live):
    plain = _get(live.client, "/series", {"until": AT.isoformat()})
    for accept in ("gzip", "br;q=1.0, gzip;q=0.5", "*"):
        raw = live.client.get(API + "/series", params={"until": AT.isoformat()}, headers={"accept-encoding": accept})
        assert raw.headers["content-encoding"] == "gzip" and raw.headers["vary"] == "accept-encoding"
        assert raw.content == plain.content  # httpx inflated it
        assert int(raw.headers["content-length"]) < len(plain.content) / 3
        assert raw.headers["etag"] != plain.headers["etag"]  # a strong tag per coding
        zipped = _get(live.client, "/series", {"until": AT.isoformat()}, **{"if-none-match": raw.headers["etag"]})
        assert zipped.status_code == 304
    headers = {"authorization": live.client.headers["authorization"], "accept-encoding": "gzip"}
    with httpx.stream("GET", f"{live.url}{API}/series", params={"until": AT.isoformat()}, headers=headers) as r:
        assert gzip.decompress(b"".join(r.iter_raw())) == plain.content  # the bytes as sent
    for refused in ("gzip;q=0", "identity", "br", "*;q=0"):
        raw = _get(live.client, "/series", {"until": AT.isoformat()}, **{"accept-encoding": refused})
        assert "content-encoding" not in raw.headers and raw.content == plain.content, refused


def test_answers_follow_the_data(live):
    path, params = "/regressions", {"limit": 1000}
    before = _get(live.client, path, params)
    assert _get(live.client, path, params).headers["etag"] == before.headers["etag"]
    gone = before.json()["data"][0]["id"]
    database = live.app.state.db
    with database.write() as cur:  # what a pass rewriting regressions does, then it moves the generation
        cur.execute("DELETE FROM regressions WHERE id = ?", [gone])
    assert _get(live.client, path, params).content == before.content  # until the pass ends, the cached answer
    database.bump_generation()
    after = _get(live.client, path, params)
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
    assert after.json()["count"] == before.json()["count"] - 1 and gone not in {r["id"] for r in after.json()["data"]}
    assert _get(live.client, path, params, **{"if-none-match": before.headers["etag"]}).status_code == 200


def test_a_new_series_appears_after_ingest(tmp_path):
    with live_server(tmp_path, scheduler_enabled=False) as live:
        empty = _get(live.client, "/series")
        assert empty.json()["data"] == [] and _get(live.client, "/series").headers["etag"] == empty.headers["etag"]
        auth = {"authorization": f"Bearer {live.settings.admin_key}"}
        exporter = OTLPSpanExporter(endpoint=f"{live.url}/v1/traces", headers=auth, timeout=10)
        try:
            assert exporter.export(genai_spans(3, seed=7, service="hot-new")) == SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()
        listed = _get(live.client, "/series", **{"if-none-match": empty.headers["etag"]})
        assert listed.status_code == 200 and {s["service"] for s in listed.json()["data"]} == {"hot-new"}


def test_accept_encoding_and_if_none_match_parsing():
    assert accepts_gzip(b"gzip, deflate, br") and accepts_gzip(b"GZIP;q=0.1") and accepts_gzip(b"*")
    assert accepts_gzip(b"*;q=0, gzip") and accepts_gzip(b"x-gzip")
    assert not accepts_gzip(b"gzip;q=0") and not accepts_gzip(b"gzip;q=0.0, *") and not accepts_gzip(b"br")
    assert not accepts_gzip(b"") and not accepts_gzip(b"gzip;q=abc")
    tags = (b'"a"', b'"a-gz"')
    assert etag_matches(b'"a"', tags) and etag_matches(b'W/"a-gz"', tags) and etag_matches(b'"x" , "a"', tags)
    assert etag_matches(b"*", tags) and not etag_matches(b'"b"', tags) and not etag_matches(b"a", tags)
