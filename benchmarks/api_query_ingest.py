"""Dashboard reads while ingest runs: 50 concurrent readers and one OTLP poster against a real ``spanprism serve``.

Target (issue 15): ``GET /api/v1/series`` p95 ≤ 50 ms at 50 concurrent readers during ingest on 10M stored calls.

1. Takes the cached 10.1M-call DuckDB file of ``api_query.py`` (built on first use by its ``build``) and copies it,
   so the spans posted here never change the cached file.
2. Starts ``spanprism serve`` on 127.0.0.1 on the copy (every background service but the scheduler, so no
   attribution pass moves the read caches mid-row), and one poster process sending 500-span OTLP protobuf bodies
   (``api_ingest.py``'s OTel-SDK bodies, fresh ids each) back to back for the whole run.
3. For each row, ``wrk`` (a C client, ``apt-get install wrk``) with ``--clients`` connections for ``--wrk-seconds``,
   ingest running: p50/p95/max latency, the spans/s the server stored meanwhile (``/metrics``), the server process's
   CPU time per request (with ingest running it includes the writer's share: on a shared machine latency measures
   the queue for the cores, the CPU column what each answer costs) and the load average. wrk's readers cost almost
   nothing, as browsers elsewhere would (Python readers cost about as much CPU per request as the server does, so on
   2 cores they take half the machine; ``--python-readers`` adds that table for the first server).
4. The rows run once per server in ``--paths`` (default ``route,hot``), ``--rounds`` times alternating (default 2):
   ``route`` is ``SPANPRISM_HOT_READS=false`` (every request through FastAPI's route, as before the thin path of
   ``api/hot_reads.py``), ``hot`` the default server. Each server starts afresh on the same copy, so one run shows
   the two side by side under the same load, and alternating shows how much the load drifted meanwhile.

| row | request |
|---|---|
| `series` | `GET /series?limit=100&until=<end of data>`: the list every dashboard opens first |
| `series_gzip` | the same with a browser's `Accept-Encoding: gzip, deflate, br, zstd` (the thin path answers gzip) |
| `series_now` | `GET /series?limit=100` (as of now: a browser's default) |
| `series_cold` | `GET /series?limit=100&until=…` with a different `until` each time (never a cache hit) |
| `regressions` | `GET /regressions?limit=100` |
| `panel_24h` | `GET /series/{key}/metrics?step=5m` over 24 h, a different series and window each time |

    .venv/bin/python benchmarks/api_query_ingest.py                 # ~10M calls; reuses api_query.py's DB
    .venv/bin/python benchmarks/api_query_ingest.py --no-ingest     # the same rows without the poster
    .venv/bin/python benchmarks/api_query_ingest.py --paths hot --rounds 1 --rows series,series_now
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import httpx
from api_ingest import PROTO, _metric, numbered, template
from api_query import KEY, START, build, measure_wrk
from timing import measure_gets, row

from spanprism.api.server import free_port, wait_healthy

ZULU = "%Y-%m-%dT%H:%M:%SZ"
#: What a browser (and httpx, Grafana) sends: the ``_gzip`` rows ask as they do; the other rows ask like wrk (identity).
BROWSER = {"accept-encoding": "gzip, deflate, br, zstd"}
FIRST_BODY = 1 << 20  # copy numbers apart from anything api_ingest.py posts


def post_forever(url: str, spans: int, ready: multiprocessing.synchronize.Event,
                 stop: multiprocessing.synchronize.Event, next_body: Synchronized[int]) -> None:  # fmt: skip
    """One OTLP client: post fresh-id bodies back to back until ``stop`` (runs in its own process); ``ready`` is set
    once the first body is stored (it also starts the server's decode worker processes). ``next_body`` carries the
    copy number on from one server to the next on the same file: a copy posted again would be a duplicate, not
    stored."""
    base = template(spans, seed=11)
    headers = {"authorization": f"Bearer {KEY}", "content-type": PROTO}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
        n = next_body.value
        while not stop.is_set():
            reply = client.post("/v1/traces", content=numbered(base, n, shift=n - FIRST_BODY))
            if reply.status_code == 503:
                time.sleep(0.05)
                continue
            reply.raise_for_status()
            ready.set()
            n += 1
            next_body.value = n


@contextmanager
def serving(db: Path, log: Path, *, hot: bool = True) -> Iterator[tuple[str, int]]:
    """``spanprism serve`` on ``db`` (the scheduler off: rows must not straddle an attribution pass); ``hot=False``
    turns the thin path of the dashboard lists off (``SPANPRISM_HOT_READS``), so every request goes through the
    route as before it existed."""
    port = free_port()
    env = {**os.environ, "SPANPRISM_ADMIN_KEY": KEY, "SPANPRISM_SCHEDULER_ENABLED": "false",
           "SPANPRISM_HOT_READS": "true" if hot else "false"}  # fmt: skip
    cmd = [str(Path(sys.executable).parent / "spanprism"), "--db", str(db), "serve", "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(url, alive=lambda: proc.poll() is None, timeout_s=180):
            raise RuntimeError(f"the server did not start; see {log}")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(60)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def posting(url: str, spans: int, enabled: bool, next_body: Synchronized[int]) -> Iterator[None]:
    """The poster process for the duration of the block (nothing when not ``enabled``)."""
    if not enabled:
        yield
        return
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=post_forever, args=(url, spans, ready, stop, next_body), daemon=True)
    proc.start()
    try:
        if not ready.wait(600):
            raise RuntimeError("the OTLP poster stored nothing in 10 minutes")
        yield
    finally:
        stop.set()
        proc.join(60)
        if proc.exitcode != 0:
            raise RuntimeError(f"the OTLP poster failed (exit {proc.exitcode})")


def stored(url: str) -> float:
    return _metric(httpx.get(f"{url}/metrics", timeout=30).text, "spanprism_calls_stored_total")


def cases(client: httpx.Client, days: int) -> dict[str, Callable[[int], str]]:
    keys = [s["series_key"] for s in client.get("/api/v1/series", params={"limit": 1000}).json()["data"]]
    end = START + timedelta(days=days)

    def panel(i: int) -> str:
        until = end - timedelta(minutes=5 * (i // len(keys)))
        since = until - timedelta(hours=24)
        return (f"/api/v1/series/{keys[i % len(keys)]}/metrics?metric=e2e_p95_ms&step=5m"
                f"&since={since.strftime(ZULU)}&until={until.strftime(ZULU)}")  # fmt: skip

    return {
        "series": lambda i: f"/api/v1/series?limit=100&until={end.strftime(ZULU)}",
        "series_gzip": lambda i: f"/api/v1/series?limit=100&until={end.strftime(ZULU)}",
        "series_now": lambda i: "/api/v1/series?limit=100",
        "series_cold": lambda i: f"/api/v1/series?limit=100&until={(end - timedelta(seconds=7 * i)).strftime(ZULU)}",
        "regressions": lambda i: "/api/v1/regressions?limit=100",
        "panel_24h": panel,
    }


def python_readers(url: str, pid: int, made: dict[str, Callable[[int], str]], args: argparse.Namespace) -> None:
    """Each row from ``--clients`` Python reader threads: latency, spans/s stored, server CPU per request."""
    print("| request | clients | n | p50 ms | p95 ms | max ms | spans/s stored | server CPU ms/request |\n"
          + "|---" * 8 + "|")  # fmt: skip
    for name, make in made.items():
        before, t0, cpu0 = stored(url), time.perf_counter(), cpu_s(pid)
        lat = measure_gets(url, make, clients=args.clients, requests=args.requests,
                           client_kwargs={"headers": {"authorization": f"Bearer {KEY}"}})  # fmt: skip
        cpu = (cpu_s(pid) - cpu0) * 1000 / len(lat)
        rate = (stored(url) - before) / (time.perf_counter() - t0)
        print(f"{row(name, args.clients, latencies=lat)} {rate:,.0f} | {cpu:.1f} |", flush=True)


def wrk_rows(path: str, url: str, pid: int, made: dict[str, Callable[[int], str]], args: argparse.Namespace) -> bool:
    """Each row from ``wrk`` (``--clients`` connections, ``--wrk-seconds``); False when wrk is not installed."""
    for name, make in made.items():
        before, t0, cpu0 = stored(url), time.perf_counter(), cpu_s(pid)
        headers = BROWSER if name.endswith("_gzip") else None
        got = measure_wrk(args.clients, [make(i) for i in range(args.requests)], url, args.wrk_seconds, headers)
        if got is None:
            print("| (wrk not installed: apt-get install wrk) | | | | | | | | | |")
            return False
        cpu = (cpu_s(pid) - cpu0) * 1000 / max(got[0], 1)
        rate = (stored(url) - before) / (time.perf_counter() - t0)
        cells = [path, name, str(got[0]), str(got[1]), *(f"{v:.1f}" for v in got[2:]), f"{rate:,.0f}", f"{cpu:.2f}",
                 f"{os.getloadavg()[0]:.1f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--clients", type=int, default=50, help="concurrent reader threads (default 50)")
    parser.add_argument("--requests", type=int, default=500, help="requests per row")
    parser.add_argument("--spans-per-body", type=int, default=500)
    parser.add_argument("--out", default="/tmp/spanprism-bench-api")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="seconds per row of the wrk pass")
    parser.add_argument("--no-ingest", action="store_true", help="no OTLP poster (the reads alone)")
    parser.add_argument("--paths", default="route,hot",
                        help="servers to compare, in order: route (SPANPRISM_HOT_READS=false: every request through "
                        "FastAPI's route, as before the thin path) and hot (the default server)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="times the --paths sequence runs (alternating)")
    parser.add_argument("--rows", default="series,series_gzip,series_now,series_cold,regressions,panel_24h",
                        help="rows of the wrk pass (comma-separated)")  # fmt: skip
    parser.add_argument("--python-readers", action="store_true",
                        help="also run each row from Python reader threads (first server only)")  # fmt: skip
    args = parser.parse_args()
    cached = Path(args.out) / f"api_{args.series}x{args.days}.duckdb"
    rows = build(cached, args.series, args.days)
    work = Path(args.out) / "during_ingest.duckdb"
    shutil.copyfile(cached, work)  # the posted spans land in a copy: the cached file keeps its row count
    wanted = args.rows.split(",")
    next_body = multiprocessing.get_context("spawn").Value("q", FIRST_BODY)
    print(f"\n{rows:,} calls stored, {args.clients} readers, "
          f"{'no ingest' if args.no_ingest else 'one OTLP client posting'}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; wrk {args.clients} connections, {args.wrk_seconds} s "
          "a row; each path's server started afresh on the same copy\n")  # fmt: skip
    header = ("| path | request | requests | non-2xx | p50 ms | p95 ms | max ms | spans/s stored "
              "| server CPU ms/request | load avg |\n" + "|---" * 10 + "|")  # fmt: skip
    try:
        printed = False
        for n in range(args.rounds):
            for path in args.paths.split(","):
                with serving(work, Path(args.out) / "during_ingest.log", hot=path == "hot") as (url, pid):
                    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"}, timeout=60) as c:
                        made = {k: v for k, v in cases(c, args.days).items() if k in wanted}
                    with posting(url, args.spans_per_body, not args.no_ingest, next_body):
                        if args.python_readers and n == 0 and not printed:
                            print(f"Python reader threads, {args.requests} requests a row, path {path}\n")
                            python_readers(url, pid, made, args)
                            print()
                        if not printed:
                            print(header)
                            printed = True
                        # wrk, a C client, costs almost nothing per request, as browsers elsewhere would; the
                        # Python readers cost about as much CPU per request as the server does.
                        if not wrk_rows(path, url, pid, made, args):
                            return
    finally:
        work.unlink(missing_ok=True)
        Path(str(work) + ".wal").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
