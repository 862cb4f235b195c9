"""Login, logout, the quarantine page and the admin forms (record the true label, download raw bytes, re-drive).

Every state-changing form is a POST that must carry a CSRF token — the session's, or for the login form the
pre-session cookie's (see :mod:`spanprism.api.web.session`) — and, but for logging in and out, come from an admin
key; the work itself is done by the REST handlers (``routers.regressions.feedback``, ``routers.quarantine.redrive``
and ``raw``), called as plain functions, so the page and the API cannot disagree.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from spanprism.api.deps import _authenticate
from spanprism.api.routers import quarantine as quarantine_routes
from spanprism.api.routers import regressions as regression_routes
from spanprism.api.schemas import FeedbackCreate, Paging
from spanprism.api.security import Principal
from spanprism.api.web import session as sessions
from spanprism.api.web.pages import error_page, who
from spanprism.api.web.render import page

router = APIRouter(include_in_schema=False)
Text = Annotated[str, Form(max_length=10_000)]


def _safe_next(target: str) -> str:
    """Only a path on this server (``/…`` but not ``//host``): a login must not become an open redirect."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _login_page(request: Request, next_url: str, *, error: str | None = None, status_code: int = 200,
                viewer: tuple[Principal | None, sessions.Session | None] = (None, None)) -> Response:  # fmt: skip
    """The login form with its CSRF token, (re)setting the pre-session cookie the token is bound to."""
    cookie, token = sessions.login_form(request)
    principal, session = viewer
    ctx = {"principal": principal, "csrf": sessions.csrf_token(request, session), "login_csrf": token,
           "next": _safe_next(next_url), "title": "log in", "error": error}  # fmt: skip
    response = page(request, "login.html", ctx, status_code=status_code)
    if cookie is not None:
        response.set_cookie(sessions.LOGIN_COOKIE, cookie, max_age=sessions.LOGIN_FORM_S, httponly=True,
                            samesite="strict", secure=_secure(request), path=sessions.LOGIN_PATH)  # fmt: skip
    return response


def _secure(request: Request) -> bool:
    public_url = request.app.state.settings.public_url
    return bool(public_url and public_url.startswith("https://"))


@router.get("/login")
async def login_form(request: Request, next: str = "/") -> Response:
    return _login_page(request, next, viewer=await sessions.viewer(request))


@router.post("/login")
async def login(request: Request, key: Annotated[str, Form(max_length=512)], next: Text = "/",
                csrf: Text = "") -> Response:  # fmt: skip
    if not sessions.login_csrf_ok(request, csrf):
        # Checked before the key: a cross-site form must not even learn whether a key is valid.
        stale = "the login form is stale or did not come from this site (CSRF check failed); log in again here"
        return _login_page(request, next, error=stale, status_code=403)
    settings = request.app.state.settings
    principal = await _authenticate(request, key.strip(), settings)
    error = None
    if principal is None:
        error = "unknown or revoked API key"
    elif not principal.allows("read"):
        error = "this key lacks the 'read' scope (an ingest-only key cannot open the pages)"
    if error:
        return _login_page(request, next, error=error, status_code=401)
    lifetime = int(settings.session_hours * 3600)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(sessions.COOKIE, sessions.encode(request, key.strip(), lifetime), max_age=lifetime,
                        httponly=True, samesite="strict", secure=_secure(request), path="/")  # fmt: skip
    # One login per form: the pre-session nonce is spent (a new one comes with the next login page).
    response.delete_cookie(sessions.LOGIN_COOKIE, path=sessions.LOGIN_PATH)
    return response


@router.post("/logout")
async def logout(request: Request, csrf: Text = "") -> Response:
    session = sessions.decode(request)
    response = RedirectResponse("/login", status_code=303)
    if sessions.csrf_ok(request, session, csrf):
        response.delete_cookie(sessions.COOKIE, path="/")
    return response


async def _admin(request: Request, csrf: str) -> tuple[Principal | None, dict[str, Any], str | None]:
    """The admin principal of a form POST, or why not (403 text)."""
    principal, session, ctx = await who(request)
    if not principal.allows("admin"):
        return None, ctx, "this needs an admin key"
    if not sessions.csrf_ok(request, session, csrf):
        return None, ctx, "the form is stale or did not come from this site (CSRF check failed); reload and retry"
    return principal, ctx, None


@router.post("/regressions/{regression_id}/feedback")
async def feedback(request: Request, regression_id: str, label: Text, reason: Text = "", note: Text = "",
                   csrf: Text = "") -> Response:  # fmt: skip
    principal, ctx, denied = await _admin(request, csrf)
    if denied:
        return error_page(request, ctx, 403, denied)
    try:
        body = FeedbackCreate(label=label, reason=reason or None, note=note or None)
    except ValidationError as exc:
        return error_page(request, ctx, 422, "; ".join(e["msg"] for e in exc.errors()))
    database = request.app.state.db
    try:
        row = await run_in_threadpool(regression_routes.feedback, regression_id, body, request, database, principal)
    except HTTPException as exc:
        return error_page(request, ctx, exc.status_code, str(exc.detail))
    return RedirectResponse(f"/regressions/{quote(row['regression_id'])}?saved=1", status_code=303)


@router.get("/quarantine")
async def quarantine_page(request: Request, offset: int = 0) -> Response:
    principal, _, ctx = await who(request)
    database, settings = request.app.state.db, request.app.state.settings
    paging = Paging(limit=200, offset=max(offset, 0))
    listing = await run_in_threadpool(quarantine_routes.index, database, settings, paging,
                                      quarantine_routes.QuarantineFilter(), principal)  # fmt: skip
    flash = request.query_params.get("done")
    return page(request, "quarantine.html", {**ctx, "rows": listing.data, "count": listing.count,
                                             "title": "quarantine", "flash": flash})  # fmt: skip


@router.get("/quarantine/{record_id}/raw")
async def quarantine_raw(request: Request, record_id: str) -> Response:
    principal, _, ctx = await who(request)
    if not principal.allows("admin"):
        return error_page(request, ctx, 403, "the raw bytes need an admin key")
    try:
        return await run_in_threadpool(quarantine_routes.raw, record_id, request.app.state.db, principal)
    except HTTPException as exc:
        return error_page(request, ctx, exc.status_code, str(exc.detail))


@router.post("/quarantine/redrive")
async def quarantine_redrive(request: Request, csrf: Text = "", id: Text = "") -> Response:
    principal, ctx, denied = await _admin(request, csrf)
    if denied:
        return error_page(request, ctx, 403, denied)
    state = request.app.state
    body = quarantine_routes.RedriveRequest(ids=[id] if id else None,
                                            filter=None if id else quarantine_routes.QuarantineFilter())  # fmt: skip
    result = await run_in_threadpool(quarantine_routes.redrive, body, state.db, state.settings, state.metrics,
                                     principal)  # fmt: skip
    done = f"re-drove {result.selected}: {result.redriven} now stored, {result.still_failing} still failing"
    return RedirectResponse(f"/quarantine?done={quote(done)}", status_code=303)
