"""The Jinja2 environment of the pages and the helpers templates call (times, numbers, names).

Jinja2 autoescapes every value; only the server-built SVG (already escaped where it embeds text) is marked safe.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from spanprism.api import wording

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
#: Bumped when a static file changes, so browsers do not keep a stale copy past an upgrade.
STATIC_VERSION = "3"


def time_tag(value: str | datetime | None) -> Markup:
    """``<time datetime="…">2026-10-03 14:05 UTC</time>``; the page's script adds the local time on hover."""
    if value is None or value == "":
        return Markup("–")
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    iso = value.isoformat().replace("+00:00", "Z")
    return Markup(f'<time datetime="{escape(iso)}">{value:%Y-%m-%d %H:%M} UTC</time>')


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals.update(
        static=lambda name: f"/static/{name}?v={STATIC_VERSION}",
        t=time_tag,
        ms=wording.ms,
        num=wording.number,
        metric_name=wording.metric_name,
        label_name=lambda label: wording.LABEL_NAMES.get(str(label), str(label or "–").replace("_", " ")),
        series_name=wording.series_label,
    )
    return templates


TEMPLATES = _templates()
#: Everything from this origin only (nothing from a CDN); inline style attributes colour the route-mix legend.
CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"


def page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """Render a template with the request and the viewer (``principal``, ``csrf``) in its context."""
    response = TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)
    # Pages show data behind a login: never cache them in a shared cache; never frame them (clickjacking).
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = CSP
    return response
