"""The web pages in a real browser: Debian's headless Chromium driven by Playwright, against a live server.

The server is the real app on 127.0.0.1 (uvicorn, every background service but the scheduler) over a copy of the
simulated world the read-API tests use (simulate → ingest → attribute). Chromium comes from apt (``.ci/run``
installs it); nothing is downloaded at test time. Locally the module skips when /usr/bin/chromium is absent,
unless ``SPANPRISM_REQUIRE_BROWSER`` is set (CI sets it), in which case it fails instead.
Screenshots of every page at 1280×800 and phone width land in ``screenshots/`` (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from conftest import ADMIN_KEY
from support.receiver import Receiver
from support.world import build_world

from spanprism.api.app import create_app
from spanprism.api.server import free_port, running
from spanprism.api.settings import Settings
from spanprism.api.wording import MECHANISMS, metric_name

CHROMIUM = Path(os.environ.get("SPANPRISM_CHROMIUM", "/usr/bin/chromium"))
SHOTS = Path(__file__).resolve().parents[1] / "screenshots"
SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
#: Elements reaching past the right edge of the viewport, outside a horizontally scrolling wrapper (tables, charts).
WIDE = """() => [...document.querySelectorAll('main *, header *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.scroll, .fig'))
  .slice(0, 5).map(e => `${e.tagName}.${e.className.baseVal ?? e.className} ${e.textContent.slice(0, 40)}`)"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

if not CHROMIUM.exists() and not os.environ.get("SPANPRISM_REQUIRE_BROWSER"):
    pytest.skip(f"no {CHROMIUM} (apt-get install chromium); CI sets SPANPRISM_REQUIRE_BROWSER", allow_module_level=True)
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright  # noqa: E402


def _reopen_one(db: Path) -> str:
    """Make the newest regression of another series open again, so the alert worker has something to page for."""
    con = duckdb.connect(str(db))
    try:
        rid = con.execute(
            "SELECT id FROM regressions WHERE change_pct >= 10 ORDER BY start_time DESC LIMIT 1"
        ).fetchone()
        con.execute("UPDATE regressions SET status = 'open', end_time = NULL WHERE id = ?", [rid[0]])
    finally:
        con.close()
    return rid[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A live server with a Slack destination (a local receiver), a read key, and the regression ids to look at."""
    world = build_world(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("web")
    shutil.copy(world, root / "server.duckdb")
    paged = _reopen_one(root / "server.duckdb")
    port = free_port("127.0.0.1")
    settings = Settings(
        db=root / "server.duckdb",
        admin_key=ADMIN_KEY,
        scheduler_enabled=False,
        alert_poll_s=0.1,
        public_url=f"http://127.0.0.1:{port}",
        trace_url_template="http://traces.invalid/{trace_id}",
    )
    slack = Receiver().start()
    app = create_app(settings)
    with (
        running(app, port=port) as url,
        httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin,
    ):
        read_key = admin.post("/api/v1/keys", json={"name": "viewer", "scopes": ["read"]}).json()["key"]
        records = admin.get("/api/v1/regressions").json()["data"]
        shown = next(r for r in records if r["status"] == "resolved" and r["exemplars"] and r["contributions_ms"])
        yield {
            "url": url,
            "app": app,
            "admin": admin,
            "read_key": read_key,
            "record": shown,
            "paged": paged,
            "slack": slack,
        }
    slack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


def _context(browser: Browser, size: str = "desktop") -> BrowserContext:
    return browser.new_context(viewport=SIZES[size], locale="en-US", timezone_id="Europe/Berlin")


def _login(page: Page, base: str, key: str, path: str = "/") -> None:
    page.goto(f"{base}/login?next={path}")
    page.fill("#key", key)
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()


class Errors:
    """Console errors and uncaught page errors of one page (an air-gapped page must not even try the network)."""

    def __init__(self, page: Page, base: str) -> None:
        self.seen: list[str] = []
        page.on("console", lambda m: self.seen.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.seen.append(str(e)))
        page.on(
            "request", lambda r: None if r.url.startswith((base, "data:")) else self.seen.append(f"off-site {r.url}")
        )


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _pages(site: dict[str, Any]) -> dict[str, str]:
    record = site["record"]
    series = site["admin"].get("/api/v1/series").json()["data"][0]["series_key"]
    return {"overview": "/", "series": f"/series/{series}", "regression": f"/regressions/{record['id']}",
            "quarantine": "/quarantine", "login": "/login"}  # fmt: skip


@pytest.mark.parametrize("size", list(SIZES))
def test_every_page_loads_without_console_errors_and_fits_the_screen(site, browser, size):
    base = site["url"]
    context = _context(browser, size)
    page = context.new_page()
    errors = Errors(page, base)
    _login(page, base, ADMIN_KEY)
    for name, path in _pages(site).items():
        response = page.goto(base + path)
        assert response is not None and response.status == 200, f"{path}: {response and response.status}"
        assert page.locator("main h1").count() == 1
        wide = page.evaluate(WIDE)
        assert wide == [], f"{path} is wider than the screen at {size} width: {wide}"
        _shot(page, f"{name}-{size}")
    assert errors.seen == []
    context.close()


def test_times_are_utc_with_the_local_time_on_hover(site, browser):
    context = _context(browser)
    page = context.new_page()
    _login(page, site["url"], site["read_key"], f"/regressions/{site['record']['id']}")
    first = page.locator("time[datetime]").first
    assert first.inner_text().endswith("UTC")
    assert first.get_attribute("title").startswith("local time: ")  # Europe/Berlin in this context
    context.close()


def test_the_keyboard_reaches_every_link_and_control(site, browser):
    context = _context(browser)
    page = context.new_page()
    _login(page, site["url"], ADMIN_KEY, f"/regressions/{site['record']['id']}")
    focusable = page.locator("a[href], button, input:not([type=hidden]), select").count()
    reached = set()
    for _ in range(focusable + 2):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.outerHTML.slice(0, 120)"))
    assert len(reached) >= focusable
    page.keyboard.press("Shift+Tab")
    context.close()


def test_the_regression_chart_draws_what_the_api_returns_and_shades_the_episode(site, browser):
    record, admin = site["record"], site["admin"]
    context = _context(browser)
    page = context.new_page()
    _login(page, site["url"], site["read_key"], f"/regressions/{record['id']}")
    figure = page.locator("#metric-chart")
    window = {k: figure.get_attribute(f"data-{k}") for k in ("series", "since", "until", "step", "metric")}
    assert window["metric"] == record["metric"]
    api = admin.get(f"/api/v1/series/{window['series']}/metrics",
                    params={"metric": record["metric"], "step": window["step"], "since": window["since"],
                            "until": window["until"]}).json()  # fmt: skip
    drawn = [v for p in api["data"] if (v := p["value"]) is not None]
    assert len(drawn) > 100  # a 24 h window of 5-minute buckets
    assert page.locator("#metric-chart circle.pt").count() == len(drawn)
    titles = page.locator("#metric-chart circle.pt").evaluate_all("els => els.map(e => e.getAttribute('data-t'))")
    assert titles == [p["time"] for p in api["data"] if p["value"] is not None]
    episode = page.locator("#metric-chart rect.episode")
    assert episode.count() == 1
    assert (episode.get_attribute("data-start"), episode.get_attribute("data-end")) == (record["start"], record["end"])
    assert page.locator("#metric-chart line.onset").get_attribute("data-time") == record["start"]
    # The shading sits where the onset is drawn: the chart's own x scale, not just the attributes, agrees.
    assert abs(float(episode.get_attribute("x")) - float(page.locator("line.onset").get_attribute("x1"))) < 0.2
    context.close()


def test_the_waterfall_bars_sum_to_observed_minus_baseline(site, browser):
    record = site["record"]
    context = _context(browser)
    page = context.new_page()
    _login(page, site["url"], site["read_key"], f"/regressions/{record['id']}")
    bars = page.locator("#waterfall rect.wf-step").evaluate_all(
        "els => els.map(e => [e.getAttribute('data-key'), +e.getAttribute('data-ms')])"
    )
    # One bar per contribution of the record, nothing else (no "window gap"), summing to observed − baseline.
    assert [k for k, _ in bars] == [*MECHANISMS] and set(record["contributions_ms"]) == set(MECHANISMS)
    assert [v for _, v in bars] == pytest.approx([record["contributions_ms"][k] for k, _ in bars], abs=1e-3)
    assert sum(v for _, v in bars) == pytest.approx(record["observed"] - record["baseline"], abs=0.01)
    assert page.locator("p.sentence").inner_text().startswith(f"{metric_name(record['metric'])} rose ")
    context.close()


FORGED_POST = """async (id) => (await fetch(`/regressions/${id}/feedback`, {method: "POST",
    headers: {"content-type": "application/x-www-form-urlencoded"}, body: "label=unexplained&csrf=forged"})).status"""


FORGED_LOGIN = """async (key) => (await fetch("/login", {method: "POST",
    headers: {"content-type": "application/x-www-form-urlencoded"}, body: `key=${key}&csrf=forged`})).status"""


def test_a_slack_alert_links_to_the_regression_page(site, browser):
    admin, slack = site["admin"], site["slack"]
    body = {"name": "slack", "kind": "slack", "secret": {"url": slack.url + "/services/T0/B0/X"}}
    dest = admin.post("/api/v1/alerts/destinations", json=body)
    assert dest.status_code == 201, dest.text
    admin.post("/api/v1/alerts/rules", json={"name": "all", "destination_id": dest.json()["id"]}).raise_for_status()
    site["app"].state.db.bump_generation()  # what a finished attribution pass does: the worker enqueues
    deadline = time.monotonic() + 30
    while not slack.ok() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slack.ok(), "the Slack receiver got nothing"
    urls = re.findall(r'"url":"([^"]+)"', slack.ok()[0]["body"].decode())
    link = next(u for u in urls if "/regressions/" in u)
    assert link == f"{site['url']}/regressions/{site['paged']}"
    context = _context(browser)
    page = context.new_page()
    page.goto(link)
    assert "/login" in page.url  # a logged-out engineer logs in once ...
    page.fill("#key", site["read_key"])
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()
    assert page.url == link  # ... and lands on the page the alert named
    assert page.locator("#metric-chart rect.episode").get_attribute("data-end") == ""  # open: shaded to the edge
    assert page.locator("h1 .status").inner_text() == "open"
    context.close()


def test_a_read_key_cannot_post_feedback_and_an_admin_key_can(site, browser):
    record, admin = site["record"], site["admin"]
    context = _context(browser)
    page = context.new_page()
    _login(page, site["url"], site["read_key"], f"/regressions/{record['id']}")
    assert page.locator("form.feedback").count() == 0  # no form for a read key ...
    assert page.evaluate(FORGED_POST, record["id"]) == 403  # ... and a hand-made POST is refused
    assert admin.get(f"/api/v1/regressions/{record['id']}").json()["feedback"] == []
    context.close()

    context = _context(browser)
    page = context.new_page()
    _login(page, site["url"], ADMIN_KEY, f"/regressions/{record['id']}")
    page.select_option("form.feedback select[name=label]", "cache_eviction")
    page.select_option("form.feedback select[name=reason]", "ttl_expired")
    page.fill("form.feedback input[name=note]", "post-mortem 7")
    page.click("form.feedback button[type=submit]")
    page.wait_for_load_state()
    assert page.locator(".flash").inner_text() == "label recorded"
    stored = admin.get(f"/api/v1/regressions/{record['id']}").json()["feedback"]
    assert [(f["label"], f["reason"], f["note"]) for f in stored] == [
        ("cache_eviction", "ttl_expired", "post-mortem 7")
    ]
    assert page.evaluate(FORGED_POST, record["id"]) == 403  # an admin session without the page's CSRF token
    context.close()


def test_a_logged_out_browser_is_sent_to_the_login_page(site, browser):
    context = _context(browser)
    page = context.new_page()
    for path in ("/", f"/regressions/{site['record']['id']}", "/quarantine"):
        page.goto(site["url"] + path)
        assert page.url.startswith(f"{site['url']}/login?next="), path
    page.fill("#key", "spk_nope_not-a-key")
    page.click("form.login button[type=submit]")
    assert page.locator(".error").inner_text() == "unknown or revoked API key"
    assert [c for c in context.cookies() if c["name"] == "spanprism_session"] == []
    # A login POST without the form's CSRF token (what a form on another site sends) is refused, even a good key.
    assert page.evaluate(FORGED_LOGIN, site["read_key"]) == 403
    assert [c for c in context.cookies() if c["name"] == "spanprism_session"] == []
    _login(page, site["url"], site["read_key"])
    (cookie,) = [c for c in context.cookies() if c["name"] == "spanprism_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and site["read_key"] not in cookie["value"]
    page.click("header form button")  # log out
    page.goto(site["url"] + "/")
    assert "/login" in page.url
    context.close()
