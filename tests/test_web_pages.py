"""The web pages over plain HTTP (the browser tests cover the rest): quarantine actions, auth edges, open reads.

A page client is an httpx client that logs in through the form and then carries only the session cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

import httpx
from conftest import ADMIN_KEY, Live
from support.otlp_spans import new_key
from support.world import serve_world


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def log_in(client: httpx.Client, key: str, next_url: str = "/") -> httpx.Response:
    """What a browser does: open the login page (pre-session cookie + form token), then post the form."""
    token = csrf(client.get("/login").text)
    return client.post("/login", data={"key": key, "next": next_url, "csrf": token})


def page_client(live: Live, key: str) -> httpx.Client:
    client = httpx.Client(base_url=live.url, timeout=30)
    reply = log_in(client, key, "/quarantine")
    assert reply.status_code == 303 and reply.headers["location"] == "/quarantine", reply.text
    return client


def test_quarantine_page_downloads_raw_bytes_and_redrives_for_an_admin_only(server: Live, legacy) -> None:
    reader = page_client(server, new_key(server, "read"))
    listing = reader.get("/quarantine")
    assert listing.status_code == 200 and "an old bug" in listing.text and 'name="csrf"' not in listing.text.split(
        "<main")[1]  # fmt: skip
    assert reader.get("/quarantine/line/raw").status_code == 403
    admin = page_client(server, ADMIN_KEY)
    page = admin.get("/quarantine").text
    raw = admin.get("/quarantine/line/raw")
    assert raw.status_code == 200 and raw.content == legacy["line"]
    assert admin.post("/quarantine/redrive", data={"csrf": "forged", "id": "line"}).status_code == 403
    done = admin.post("/quarantine/redrive", data={"csrf": csrf(page), "id": "line"})
    assert done.status_code == 303 and "1%20now%20stored" in done.headers["location"]
    rows = server.client.get("/api/v1/quarantine", params={"redriven": True}).json()["data"]
    assert [r["id"] for r in rows] == ["line"]


def test_login_refuses_unknown_and_ingest_only_keys_and_never_redirects_off_site(server: Live) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/").status_code == 303 and client.get("/").headers["location"] == "/login?next=/"
        assert log_in(client, "nope").status_code == 401
        ingest_only = log_in(client, new_key(server, "ingest"))
        assert ingest_only.status_code == 401 and "read" in ingest_only.text
        reply = log_in(client, ADMIN_KEY, "//evil.example/x")
        assert reply.status_code == 303 and reply.headers["location"] == "/"
        cookie = reply.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and ADMIN_KEY.lower() not in cookie
        assert client.get("/").status_code == 200
        assert client.cookies.get("spanprism_session")
        tampered = client.cookies["spanprism_session"][:-2] + "xx"
        client.cookies.set("spanprism_session", tampered)
        assert client.get("/").status_code == 303  # a forged signature is no session


def test_revoking_a_key_ends_its_web_sessions(server: Live) -> None:
    key = new_key(server, "read")
    client = page_client(server, key)
    assert client.get("/").status_code == 200
    key_id = key.split("_")[1]
    assert server.client.delete(f"/api/v1/keys/{key_id}").status_code in (200, 204)
    assert client.get("/").status_code == 303


def test_read_open_serves_pages_without_a_login_but_not_admin_actions(make_server) -> None:
    with make_server(read_open=True) as live, httpx.Client(base_url=live.url, timeout=30) as anonymous:
        assert anonymous.get("/").status_code == 200
        assert anonymous.get("/quarantine").status_code == 200
        assert anonymous.post("/quarantine/redrive", data={"csrf": "x"}).status_code == 403
        assert anonymous.get("/regressions/ffffffff").status_code == 404
        assert "/static/style.css" in anonymous.get("/").text
        css = anonymous.get("/static/style.css")
        assert css.status_code == 200 and "http" not in css.text  # nothing fetched from elsewhere


STALE = "CSRF check failed"


def _sealed(secret: str, body: dict) -> str:
    """A cookie value signed as the server signs them (to forge an expired but genuine login form)."""
    payload = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    return f"{payload}.{_mac(secret, payload.encode())}"


def _mac(secret: str, message: bytes) -> str:
    mac = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def test_a_login_post_without_the_forms_csrf_token_is_refused(make_server) -> None:
    with make_server(session_secret="s" * 32) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        form = client.get("/login")
        cookie = form.headers["set-cookie"].lower()
        assert "spanprism_login=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert "path=/login" in cookie
        token = csrf(form.text)
        # No token, a wrong token, a token without its cookie: all 403 with a message, and no session.
        for data, cookies in (({}, None), ({"csrf": "forged"}, None), ({"csrf": token}, {})):
            jar = httpx.Cookies(cookies) if cookies is not None else client.cookies
            with httpx.Client(base_url=live.url, timeout=30, cookies=jar) as other:
                reply = other.post("/login", data={"key": ADMIN_KEY, **data})
                assert reply.status_code == 403 and STALE in reply.text, data
                assert "spanprism_session" not in reply.headers.get("set-cookie", "")
                assert csrf(reply.text)  # the refusal page is a fresh, working form
        # The token of another browser's form does not fit this browser's cookie.
        with httpx.Client(base_url=live.url, timeout=30) as other:
            theirs = csrf(other.get("/login").text)
        assert theirs != token and client.post("/login", data={"key": ADMIN_KEY, "csrf": theirs}).status_code == 403
        # A genuinely signed login cookie past its expiry, or a session cookie passed off as one, is no form.
        expired = _sealed("s" * 32, {"k": "login", "n": "abc", "e": int(time.time()) - 1})
        session_like = _sealed("s" * 32, {"h": "x", "n": "abc", "e": int(time.time()) + 600})
        token_abc = _mac("s" * 32, b"login-csrf:abc")  # the right token for nonce "abc"
        for value in (expired, session_like):
            with httpx.Client(base_url=live.url, timeout=30) as other:
                other.cookies.set("spanprism_login", value)
                assert other.post("/login", data={"key": ADMIN_KEY, "csrf": token_abc}).status_code == 403
        fresh = _sealed("s" * 32, {"k": "login", "n": "abc", "e": int(time.time()) + 600})
        with httpx.Client(base_url=live.url, timeout=30) as other:  # (the same forgery, unexpired, is accepted)
            other.cookies.set("spanprism_login", fresh)
            assert other.post("/login", data={"key": ADMIN_KEY, "csrf": token_abc}).status_code == 303
        # The form's own token logs in, spends the pre-session cookie, and the session works.
        reply = client.post("/login", data={"key": ADMIN_KEY, "csrf": token, "next": "/quarantine"})
        assert reply.status_code == 303 and reply.headers["location"] == "/quarantine"
        assert client.cookies.get("spanprism_login") is None and client.get("/quarantine").status_code == 200


def test_the_regression_page_is_cached_per_pass_but_shows_new_labels_and_old_records(tmp_path_factory) -> None:
    """The immutable part of a regression page is kept until the next attribution pass; feedback is always fresh.

    Exemplars carry their call's details (provider request id, start) since the labelling pass stores them; a
    record stored before that (ids only) still shows them, looked up in the stored calls.
    """
    with serve_world(tmp_path_factory, "page-cache") as live:
        record = next(r for r in live.client.get("/api/v1/regressions").json()["data"] if r["exemplars"])
        first = record["exemplars"][0]
        assert first["start_time"] and "provider_request_id" in first  # the details are part of the API record too
        admin = page_client(live, ADMIN_KEY)
        path = f"/regressions/{record['id']}"
        page = admin.get(path)
        assert page.status_code == 200 and first["trace_id"] in page.text and "post-mortem 9" not in page.text
        posted = admin.post(f"{path}/feedback", data={"label": "cache_eviction", "note": "post-mortem 9",
                                                      "csrf": csrf(page.text)})  # fmt: skip
        assert posted.status_code == 303
        assert "post-mortem 9" in admin.get(path).text  # read fresh though the rest of the page is cached
        # An attribution stored with bare ids: the next pass's generation shows the looked-up calls.
        with live.app.state.db.write() as cur:
            bare = [{"trace_id": x["trace_id"], "span_id": x["span_id"]} for x in record["exemplars"]]
            cur.execute("UPDATE regression_attributions SET exemplars = ? WHERE regression_id = ?",
                        [json.dumps(bare), record["id"]])  # fmt: skip
        stale = admin.get(path).text
        live.app.state.db.bump_generation()
        fresh = admin.get(path).text
        when = first["start_time"][:16].replace("T", " ")
        assert when in stale and when in fresh and first["trace_id"] in fresh
        assert fresh.count('<time datetime="') == stale.count('<time datetime="')  # every exemplar's start found
