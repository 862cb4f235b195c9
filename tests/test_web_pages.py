"""The web pages over plain HTTP (the browser tests cover the rest): quarantine actions, auth edges, open reads.

A page client is an httpx client that logs in through the form and then carries only the session cookie.
"""

from __future__ import annotations

import re

import httpx
from conftest import ADMIN_KEY, Live
from support.otlp_spans import new_key


def page_client(live: Live, key: str) -> httpx.Client:
    client = httpx.Client(base_url=live.url, timeout=30)
    reply = client.post("/login", data={"key": key, "next": "/quarantine"})
    assert reply.status_code == 303 and reply.headers["location"] == "/quarantine", reply.text
    return client


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


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
        assert client.post("/login", data={"key": "nope"}).status_code == 401
        ingest_only = client.post("/login", data={"key": new_key(server, "ingest")})
        assert ingest_only.status_code == 401 and "read" in ingest_only.text
        reply = client.post("/login", data={"key": ADMIN_KEY, "next": "//evil.example/x"})
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
