"""The regression page over ≥ 10M stored calls: its data for a 24 h window, and the whole page over HTTP.

Target (issue 12): the regression page's data for a 24 h window over 10M stored calls answers in ≤ 100 ms p95.
It uses the same cached DuckDB file as ``api_query.py`` (100 series × 14 days ≈ 10.1M calls, rollups, baselines and
detected regressions; built on first use). The file's regressions carry no labels, so the first run stores for each
the attribution row the labelling pass would write: five calls spread over its episode as exemplars, with their
calls' details (provider request id, timings, tokens, route), not timed.
Then it measures, side by side in one run:

- `data_before` / `data`: in process, everything the page reads, cold (no cache): the record by id prefix, its
  24 h window, the series, the metric and its baseline band at 5-minute steps, the exemplar calls with their
  provider request ids, the post-mortem labels. `data_before` is the path as it was before it was made cheaper
  (kept here as the reference, see :func:`before`: every record parsed to find one, the series looked up by name,
  the baseline read apart, the exemplar calls looked up in ``llm_calls``: 7 queries); `data` is
  :func:`spanprism.api.web.data.regression_page` plus the feedback read (the record by id prefix in SQL, the series
  and its baseline in one query by the key stored with the regression, the rollups, the feedback: 4 queries, the
  exemplars' details come with the record). The two take turns request by request, so they share the same load;
- per step of each (`--steps`): the same, timed query by query;
- `page_first`: ``GET /regressions/{id}``, the whole HTML page from the real app in a child process, the first
  view of each regression (the app caches the immutable part of a page per attribution generation);
  `page_1` / `page_8`: then every page again and again with 1 and 8 concurrent logged-in clients.

    .venv/bin/python benchmarks/web_regression.py                       # ~10M calls; first run builds the DB
    .venv/bin/python benchmarks/web_regression.py --series 20 --days 7  # a quick look
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from api_query import KEY, build, serving
from timing import measure_calls, measure_gets, measure_steps, row

from spanprism.api.storage.connect import open_db
from spanprism.api.web import data
from spanprism.attribution.passes.label_pass import find_regression, list_feedback
from spanprism.attribution.store import panels, series_list
from spanprism.attribution.store.records import list_regressions

EXEMPLARS = 5


def _when(text: str | None) -> datetime | None:
    return None if not text else datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def store_exemplars(path: Path) -> int:
    """Give every regression without a (detailed) attribution row one with five calls spread over its episode as
    exemplars, with their calls' details, as the labelling pass stores them."""
    con = open_db(path)
    try:
        todo = con.execute(
            "SELECT r.id, r.service, r.start_time, coalesce(r.end_time, r.start_time + INTERVAL 3 HOUR)"
            " FROM regressions r LEFT JOIN regression_attributions a ON a.regression_id = r.id"
            " WHERE a.regression_id IS NULL OR a.exemplars NOT LIKE '%start_time%'"
        ).fetchall()
        for rid, service, start, end in todo:
            picked = con.execute(
                "SELECT trace_id, span_id FROM (SELECT trace_id, span_id, row_number() OVER (ORDER BY start_time) AS k,"
                " count(*) OVER () AS n FROM llm_calls WHERE service = ? AND start_time >= ? AND start_time < ?)"
                " WHERE (k - 1) % greatest(n // ?, 1) = 0 ORDER BY k LIMIT ?",
                [service, start, end, EXEMPLARS, EXEMPLARS],
            ).fetchall()
            ids = [{"trace_id": t, "span_id": s} for t, s in picked]
            exemplars = orjson.dumps(panels.exemplar_calls(con, ids, since=start, until=end)).decode()
            con.execute("DELETE FROM regression_attributions WHERE regression_id = ?", [rid])
            con.execute("INSERT INTO regression_attributions VALUES (?, 'unexplained', NULL, 0.0, '{}', '{}', '[]', ?,"
                        " 'bench', 0, 0, now(), NULL)", [rid, exemplars])  # fmt: skip
        con.execute("CHECKPOINT")
        return len(todo)
    finally:
        con.close()


# --- the page's data path before (the reference) and now ----------------------------------------------------------


def _before_exemplars(cur: Any, record: dict[str, Any]) -> list[tuple]:
    """The exemplar lookup as it was: a ``(trace_id, span_id) IN (subquery)`` semi-join over the episode."""
    pairs = [(x["trace_id"], x["span_id"]) for x in record["exemplars"]]
    slack = timedelta(minutes=5)
    end = _when(record["end"])
    return cur.execute(
        "SELECT trace_id, span_id, provider_request_id, response_id, start_time, duration_ms, ttft_ms,"
        " uncached_input_tokens, cache_read_tokens, output_tokens, region, deployment, response_model"
        " FROM llm_calls WHERE (trace_id, span_id) IN (SELECT (t, s) FROM (SELECT unnest(?) AS t, unnest(?) AS s))"
        " AND start_time >= coalesce(?, '-infinity'::TIMESTAMPTZ)"
        " AND start_time < coalesce(?, 'infinity'::TIMESTAMPTZ)",
        [[t for t, _ in pairs], [s for _, s in pairs], _when(record["start"]) - slack, end + slack if end else None],
    ).fetchall()


def before(cur: Any, ref: str) -> dict[str, Callable[[], Any]]:
    """The steps of the data path before: every record parsed to find one by prefix, the series looked up by its
    names (a count and a page of ``series``), the metric, and the exemplars by a semi-join."""
    state: dict[str, Any] = {}

    def find() -> None:
        matches = [r for r in list_regressions(cur, detail=True) if r["id"].startswith(ref)]
        state["r"] = matches[0]
        state["r"]["feedback"] = list_feedback(cur, state["r"]["id"])
        state["win"] = data.regression_window(state["r"])

    def series() -> None:
        s = state["r"]["series"]
        filters = {"service": s.get("service"), "provider": s.get("provider"), "model": s.get("model"),
                   "operation": s.get("operation"), "tenant": s.get("tenant")}  # fmt: skip
        rows, _ = series_list.list_series(cur, filters=filters, limit=50, offset=0)
        state["series"] = next(r for r in rows if r.get("tenant") == s.get("tenant"))

    return {"find": find, "series": series, "points": lambda: _points(cur, state),
            "exemplars": lambda: _before_exemplars(cur, state["r"])}  # fmt: skip


def after(cur: Any, ref: str) -> dict[str, Callable[[], Any]]:
    """The steps of :func:`spanprism.api.web.data.regression_page` and the feedback read, one at a time."""
    state: dict[str, Any] = {}

    def find() -> None:
        state["r"] = find_regression(cur, ref, feedback=False)
        state["win"] = data.regression_window(state["r"])

    def series() -> None:
        state["series"] = series_list.regression_series(cur, state["r"]["id"])

    def points() -> int:
        win = state["win"]
        return len(panels.metric_points(cur, state["series"], state["r"]["metric"], step_s=win.step_s,
                                        since=win.since, until=win.until, config=data.CONFIG,
                                        params=state["series"]["baseline_params"]))  # fmt: skip

    def exemplars() -> None:
        assert all("start_time" in x for x in state["r"]["exemplars"])  # stored with the record: nothing to read

    return {"find": find, "series": series, "points": points, "exemplars": exemplars,
            "feedback": lambda: data.feedback(cur, state["r"]["id"])}  # fmt: skip


def _points(cur: Any, state: dict[str, Any]) -> int:
    win = state["win"]
    return len(panels.metric_points(cur, state["series"], state["r"]["metric"], step_s=win.step_s, since=win.since,
                                    until=win.until, config=data.CONFIG))  # fmt: skip


def measure_data(path: Path, requests: int, steps: bool) -> tuple[dict[str, list[float]], int, int]:
    """In-process latencies of the whole data path (before and now), then per step with ``steps``."""
    con = open_db(path)
    try:
        cur = con.cursor()
        refs = [r["id"][:12] for r in list_regressions(cur)]
        view = data.regression_page(cur, refs[0])
        assert view is not None and view["series"] is not None and len(view["exemplars"]) == EXEMPLARS
        assert all(x.get("start_time") for x in view["exemplars"]), "exemplar calls not found"

        def whole(i: int) -> None:
            for step in before(cur, refs[i % len(refs)]).values():
                step()

        def now(i: int) -> None:
            found = data.regression_page(cur, refs[i % len(refs)])
            data.feedback(cur, found["r"]["id"])  # type: ignore[index]

        fns = {"data_before": whole, "data": now}
        out = measure_calls(fns, requests)
        if steps:
            paths = {"before": lambda i: before(cur, refs[i % len(refs)]),
                     "now": lambda i: after(cur, refs[i % len(refs)])}  # fmt: skip
            out |= measure_steps(paths, requests)
        return out, len(refs), len(view["points"])
    finally:
        con.close()


def measure_pages(path: Path, requests: int) -> list[str]:
    """Rows of the whole page over HTTP: first views (cache misses), then 1 and 8 clients."""
    with serving(path) as url, httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"}) as c:
        ids = [r["id"] for r in c.get("/api/v1/regressions", params={"limit": 1000}).json()["data"]]
        # The pages take the session cookie, not a bearer key: log in through the form once (what a browser does).
        form = c.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        cookie = c.post("/login", data={"key": KEY, "next": "/", "csrf": token}).cookies.get("spanprism_session")
        assert cookie, "login failed"
        kwargs = {"cookies": {"spanprism_session": cookie}}
        paths = [f"/regressions/{i}" for i in ids]

        def page_ok(resp: httpx.Response) -> bool:
            return "wf-step" in resp.text and resp.text.count('class="num">') > 0

        rows = [row("page_first", 1, latencies=measure_gets(url, lambda i: paths[i], clients=1, requests=len(paths),
                                                             client_kwargs=kwargs, check=page_ok))]  # fmt: skip
        for clients in (1, 8):
            lat = measure_gets(url, lambda i: paths[i % len(paths)], clients=clients, requests=requests,
                               client_kwargs=kwargs, check=page_ok)  # fmt: skip
            rows.append(row(f"page_{clients}", clients, latencies=lat))
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--requests", type=int, default=200, help="requests per row")
    parser.add_argument("--steps", action="store_true", help="also time each step of both data paths")
    parser.add_argument("--out", default="/tmp/spanprism-bench-api")
    args = parser.parse_args()
    path = Path(args.out) / f"api_{args.series}x{args.days}.duckdb"
    rows = build(path, args.series, args.days)
    stored = store_exemplars(path)
    lat, n_records, points = measure_data(path, args.requests, args.steps)
    print(f"\n{rows:,} calls, {n_records} regressions ({stored} given exemplars now), {points} points per chart"
          " (24 h at 5 min)\n")  # fmt: skip
    print("| row | clients | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|---|")
    for name, values in lat.items():
        print(row(name, 1, latencies=values), flush=True)
    for line in measure_pages(path, args.requests):
        print(line, flush=True)


if __name__ == "__main__":
    main()
