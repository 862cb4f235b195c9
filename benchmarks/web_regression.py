"""The regression page over ≥ 10M stored calls: its data for a 24 h window, and the whole page over HTTP.

Target (issue 12): the regression page's data for a 24 h window over 10M stored calls answers in ≤ 100 ms p95.
It uses the same cached DuckDB file as ``api_query.py`` (100 series × 14 days ≈ 10.1M calls, rollups, baselines and
detected regressions; built on first use), then measures:

- `data`: in process, everything ``api/web/data.py`` reads for the page: the record by id prefix, its 24 h
  window, the metric and its baseline band at 5-minute steps, and 5 exemplar calls (the bench file's regressions
  carry no labels, so 5 calls of each episode are handed to the record as its exemplars);
- `page_1`: ``GET /regressions/{id}``, the whole HTML page (data, SVG, template) from the real app in a child
  process, one logged-in client; `page_8`: the same with 8 concurrent clients.

    .venv/bin/python benchmarks/web_regression.py                       # ~10M calls; first run builds the DB
    .venv/bin/python benchmarks/web_regression.py --series 20 --days 7  # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from api_query import KEY, build, serving

from spanprism.api.storage.connect import open_db
from spanprism.api.web import data
from spanprism.attribution.store.records import list_regressions


def _row(name: str, lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=100)
    return f"| {name} | {len(lat)} | {q[49]:.1f} | {q[94]:.1f} | {max(lat):.1f} |"


def _with_exemplars(cur: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Five calls of the record's episode as its exemplars (not timed: labelling would have stored them)."""
    s = record["series"]
    rows = cur.execute(
        "SELECT trace_id, span_id FROM llm_calls WHERE service = ? AND start_time >= ?::TIMESTAMPTZ"
        " AND start_time < ?::TIMESTAMPTZ + INTERVAL 1 HOUR ORDER BY start_time LIMIT 5",
        [s["service"], record["start"], record["start"]],
    ).fetchall()
    return {**record, "exemplars": [{"trace_id": t, "span_id": sp} for t, sp in rows]}


def page_data(cur: Any, record: dict[str, Any]) -> int:
    """What the regression page reads, as :func:`spanprism.api.web.pages.regression_page` does; returns points."""
    found = data.find_regression(cur, record["id"][:12])
    assert found is not None
    found["exemplars"] = record["exemplars"]
    view = data.regression_view(cur, found, data.regression_window(found))
    assert view["series"] is not None and len(view["exemplars"]) == len(record["exemplars"])
    return len(view["points"])


def measure_data(path: Path, requests: int) -> tuple[list[float], int, int]:
    con = open_db(path)
    try:
        cur = con.cursor()
        records = [_with_exemplars(cur, r) for r in list_regressions(cur)]
        latencies, points = [], 0
        for i in range(requests):
            t0 = time.perf_counter()
            points = page_data(cur, records[i % len(records)])
            latencies.append((time.perf_counter() - t0) * 1000)
        return latencies, len(records), points
    finally:
        con.close()


def measure_pages(url: str, cookie: str, paths: list[str], clients: int, requests: int) -> list[float]:
    """Latencies (ms) of ``requests`` page GETs over ``clients`` threads, each a logged-in keep-alive connection."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        with httpx.Client(base_url=url, cookies={"spanprism_session": cookie}, timeout=60) as client:
            while (i := next(counter, None)) is not None:
                t0 = time.perf_counter()
                resp = client.get(paths[i % len(paths)])
                dt = (time.perf_counter() - t0) * 1000
                if resp.status_code != 200 or "wf-step" not in resp.text:
                    raise RuntimeError(f"{paths[i % len(paths)]} → {resp.status_code}")
                with lock:
                    latencies.append(dt)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--requests", type=int, default=200, help="requests per row")
    parser.add_argument("--out", default="/tmp/spanprism-bench-api")
    args = parser.parse_args()
    path = Path(args.out) / f"api_{args.series}x{args.days}.duckdb"
    rows = build(path, args.series, args.days)
    lat, n_records, points = measure_data(path, args.requests)
    print(f"\n{rows:,} calls, {n_records} regressions, {points} points per chart (24 h at 5 min)\n")
    print("| row | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    print(_row("data", lat), flush=True)
    with serving(path) as url, httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"}) as c:
        ids = [r["id"] for r in c.get("/api/v1/regressions", params={"limit": 1000}).json()["data"]]
        # The pages take the session cookie, not a bearer key: log in once per client (what a browser does).
        cookie = c.post("/login", data={"key": KEY, "next": "/"}).cookies.get("spanprism_session")
        assert cookie, "login failed"
        for clients in (1, 8):
            lat = measure_pages(url, cookie, [f"/regressions/{i}" for i in ids], clients, args.requests)
            print(_row(f"page_{clients}", lat), flush=True)


if __name__ == "__main__":
    main()
