"""The read pages: overview (``/``), a series (``/series/{key}``) and a regression (``/regressions/{id}``).

Same process, port and data as the REST API: each handler reads through :mod:`spanprism.api.web.data` (the panel and
record functions the routers use) in the thread pool, then renders a template. A viewer without a session is sent
to the login page unless ``read_open`` is set. Admin forms live in :mod:`spanprism.api.web.admin`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from spanprism.api import wording
from spanprism.api.routers import ingest as ingest_routes
from spanprism.api.routers import quarantine as quarantine_routes
from spanprism.api.routers.series import panel_cache
from spanprism.api.schemas import Paging
from spanprism.api.security import Principal
from spanprism.api.web import bars, charts, data
from spanprism.api.web.render import page
from spanprism.api.web.session import Session, csrf_token, viewer
from spanprism.attribution.store import panels, series_list
from spanprism.attribution.store.records import list_regressions
from spanprism.attribution.vocabulary import LABELS, REASONS
from spanprism.models.schema import ROUTE_COLUMNS

router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    """Raised by :func:`who` for a logged-out viewer on a closed server; answered with a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def login_redirect(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={quote(exc.next_url, safe='/')}", status_code=303)


async def who(request: Request) -> tuple[Principal, Session | None, dict[str, Any]]:
    """The viewer, their session and the template context every page shares (or LoginRequired)."""
    principal, session = await viewer(request)
    if principal is None or not principal.allows("read"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    ctx = {"principal": principal, "csrf": csrf_token(request, session), "is_admin": principal.allows("admin")}
    return principal, session, ctx


def error_page(request: Request, ctx: dict[str, Any], status_code: int, message: str) -> Response:
    return page(request, "error.html", {**ctx, "title": f"{status_code}", "message": message}, status_code)


@router.get("/")
async def overview(request: Request) -> Response:
    principal, _, ctx = await who(request)
    database, settings = request.app.state.db, request.app.state.settings

    def read() -> dict[str, Any]:
        with database.read() as cur, database.state.read() as rc:
            win = data.window_ending(cur, 24, None, datetime.now(UTC))
            rows, total = data.overview_rows(cur, win, results=rc)
            open_by_label = sorted(panels.open_regressions_by_label(rc).items(), key=lambda kv: -kv[1])
            regressions = list_regressions(rc)[:25]
        for row in rows:
            row["spark_e2e"], row["spark_ttft"] = (
                charts.sparkline(row["spark"][m], label=f"{m} last 24 h", since=win.since_iso, until=win.until_iso)
                for m in ("e2e_p95_ms", "ttft_p95_ms")
            )
        first = Paging(limit=1, offset=0)
        batches = ingest_routes.batches(database, settings, first, principal, None, None, None)
        pending = quarantine_routes.index(database, settings, first, quarantine_routes.QuarantineFilter(redriven=False),
                                          principal)  # fmt: skip
        return {"win": win, "series": rows, "total": total, "open_by_label": [(k, int(v)) for k, v in open_by_label],
                "regressions": regressions, "last_batch": batches.data[0] if batches.data else None,
                "quarantined": pending.count}  # fmt: skip

    return page(request, "overview.html", {**ctx, **await run_in_threadpool(read), "title": "overview"})


def _until(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _series_context(cur: Any, series: dict[str, Any], win: data.Window) -> dict[str, Any]:
    view = data.series_view(cur, series, win)
    episodes = [charts.Episode(r["start"], r["end"], f"{r['label']} {r['metric']} {r['change_pct']:+.0f} %",
                               f"/regressions/{r['id']}") for r in view["regressions"]]  # fmt: skip
    for c in view["charts"]:
        c["svg"] = charts.metric_chart(c["points"], label=c["title"], since=win.since_iso, until=win.until_iso,
                                       episodes=episodes, extra=c["extra"], unit=c["unit"])  # fmt: skip
    mixes = []
    for dim in ("region", "deployment", "response_model", "system_fingerprint", "server_address"):
        if dim in ROUTE_COLUMNS:
            svg, legend = bars.route_mix_chart(view["routes"], dim, since=win.since_iso, until=win.until_iso,
                                               step_s=win.step_s)  # fmt: skip
            mixes.append({"name": wording.ROUTE_DIMENSIONS.get(dim, dim), "svg": svg, "legend": legend})
    return {"charts": view["charts"], "mixes": mixes, "regressions": view["regressions"]}


@router.get("/series/{series_key}")
async def series_page(request: Request, series_key: str, range: str = "24h", until: str | None = None) -> Response:
    _, _, ctx = await who(request)
    hours = data.RANGES.get(range, 24.0)
    database = request.app.state.db

    def read() -> dict[str, Any] | None:
        with database.read() as cur:
            series = series_list.get_series(cur, series_key)
            if series is None:
                return None
            win = data.window_ending(cur, hours, _until(until), datetime.now(UTC))
            return {"series": series, "win": win, **_series_context(cur, series, win)}

    found = await run_in_threadpool(read)
    if found is None:
        return error_page(request, ctx, 404, f"no series {series_key}")
    until_input = found["win"].until.strftime("%Y-%m-%dT%H:%M")
    return page(request, "series.html", {**ctx, **found, "ranges": list(data.RANGES), "range": range,
                                         "until_input": until_input, "title": found["series"]["label"]})  # fmt: skip


def _exemplar_links(exemplars: list[dict[str, Any]], template: str | None) -> list[dict[str, Any]]:
    """New dicts (the cached ones are shared between requests) with the trace viewer's ``url``."""
    return [{**x, "url": template.format(trace_id=x["trace_id"], span_id=x["span_id"]) if template else None}
            for x in exemplars]  # fmt: skip


@router.get("/regressions/{regression_id}")
async def regression_page(request: Request, regression_id: str, debug: bool = False) -> Response:
    _, _, ctx = await who(request)
    database, settings = request.app.state.db, request.app.state.settings

    def compute() -> dict[str, Any] | None:
        with database.read() as cur, database.state.read() as rc:
            found = data.regression_page(cur, regression_id, results=rc)
        if found is None:
            return None
        r, win = found["r"], found["win"]
        episode = charts.Episode(r["start"], r["end"], f"episode {r['start']} → {r['end'] or 'open'}")
        svg = charts.metric_chart(
            found["points"],
            label=f"{r['metric']} against its baseline band",
            since=win.since_iso,
            until=win.until_iso,
            episodes=[episode],
            onset=r["start"],
        )
        return {**found, "metric_svg": svg, "waterfall_svg": bars.waterfall(r)}  # fmt: skip

    # The record, its charts and exemplars change only with an attribution pass (which moves the generation); the
    # post-mortem labels are recorded between passes, so they alone are read on every view.
    cached = await panel_cache(request).aget_or_compute(database, ("regression-page", regression_id), compute)
    if cached is None:
        return error_page(request, ctx, 404, f"no single regression matches {regression_id!r}")

    def feedback() -> list[dict[str, Any]]:
        with database.state.read() as rc:
            return data.feedback(rc, cached["r"]["id"])

    found = {**cached, "r": {**cached["r"], "feedback": await run_in_threadpool(feedback)}}
    r = found["r"]
    parts = wording.contributions(r)
    context = {
        **found, "title": f"{wording.metric_name(r['metric'])} regression", "sentence": wording.sentence(r),
        "cause": wording.cause(r), "contributions": parts, "total": sum(v for *_, v in parts),
        "evidence": wording.evidence_lines(r, debug=debug), "debug": debug,
        "trace_links": bool(settings.trace_url_template),
        "exemplars": _exemplar_links(found["exemplars"], settings.trace_url_template),
        "labels": list(LABELS), "reasons": REASONS, "flash": "label recorded" if request.query_params.get("saved")
        else None,
    }  # fmt: skip
    return page(request, "regression.html", {**ctx, **context})
