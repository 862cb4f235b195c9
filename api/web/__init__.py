"""Web pages on the API's port: overview, series, regression (what alerts link to), quarantine, login.

Server-rendered HTML (Jinja2) with server-side SVG charts and one small script (local times on hover); no CDN, no
web fonts, so the pages work air-gapped. They read through the same query functions as the REST API.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def mount(app: FastAPI) -> None:
    """Add the pages, their static files and the logged-out redirect to ``app`` (after the API routes)."""
    from spanprism.api.web import admin, pages
    from spanprism.api.web.render import STATIC

    app.include_router(pages.router)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(pages.LoginRequired, pages.login_redirect)
