"""What one cached ``GET /api/v1/series`` costs the server, no ingest: uvicorn's floor, the thin path, the route.

Each mode serves in a child process of its own under uvicorn (uvloop + httptools, as ``spanprism serve``), on a copy
of ``api_query.py``'s 10.1M-call file; ``wrk`` (50 connections) asks one cached ``/series?limit=100&until=…`` for a
warm-up and then ``--seconds``; the row is the process's CPU time (user + system) per answer and wrk's latencies:

| mode | server |
|---|---|
| `floor` | a bare ASGI app answering the same 63 KB body: what uvicorn itself costs per request |
| `hot` | the app with the thin path (``api/hot_reads.py``), identity body |
| `hot_gzip` | the same, the client accepting gzip (as browsers do) |
| `route` | the app with ``hot_reads=false``: every request through FastAPI's routing and dependencies |

    .venv/bin/python benchmarks/api_hot_reads.py
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import uvicorn
from api_query import KEY, START, build, measure_wrk

from spanprism.api.app import create_app
from spanprism.api.server import free_port, running
from spanprism.api.settings import Settings

MODES = ("floor", "hot", "hot_gzip", "route")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve_one(mode: str, db: Path, path: str, seconds: int) -> None:
    """Serve in this process while a thread drives wrk; prints one table row."""
    if mode == "floor":
        with running(create_app(Settings(db=db, admin_key=KEY), services=[])) as url:  # the real answer's bytes
            body = httpx.get(url + path, headers={"authorization": f"Bearer {KEY}"}).content

        async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
            if scope["type"] == "http":
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
    else:
        app = create_app(Settings(db=db, admin_key=KEY, hot_reads=mode != "route"), services=[])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning",
                                           access_log=False, lifespan="auto"))  # fmt: skip
    headers = {"accept-encoding": "gzip, deflate, br, zstd"} if mode == "hot_gzip" else None
    url = f"http://127.0.0.1:{port}"

    def drive() -> None:
        try:
            while not server.started:
                time.sleep(0.05)
            measure_wrk(50, [path], url, 2, headers)  # warm: the answer is cached (and captured) before timing
            cpu0 = cpu_s()
            got = measure_wrk(50, [path], url, seconds, headers)
            assert got is not None and got[1] == 0, got
            cpu = (cpu_s() - cpu0) * 1000 / got[0]
            print(f"| {mode} | {got[0]} | {got[2]:.1f} | {got[3]:.1f} | {cpu:.3f} | {os.getloadavg()[0]:.1f} |",
                  flush=True)  # fmt: skip
        finally:
            server.should_exit = True

    threading.Thread(target=drive, daemon=True).start()
    server.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seconds", type=int, default=8, help="seconds of wrk per mode")
    parser.add_argument("--rounds", type=int, default=2, help="times the modes run (alternating)")
    parser.add_argument("--out", default="/tmp/spanprism-bench-api")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # a child: serve one mode
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = f"/api/v1/series?limit=100&until={(START + timedelta(days=args.days)).strftime('%Y-%m-%dT%H:%M:%SZ')}"
    if args.mode:
        serve_one(args.mode, Path(args.db), path, args.seconds)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    cached = Path(args.out) / f"api_{args.series}x{args.days}.duckdb"
    build(cached, args.series, args.days)
    work = Path(args.out) / "hot_reads.duckdb"
    shutil.copyfile(cached, work)
    print(f"\ncached GET {path}, wrk 50 connections, no ingest; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print("| mode | requests | p50 ms | p95 ms | server CPU ms/request | load avg |\n" + "|---" * 6 + "|", flush=True)
    try:
        for _ in range(args.rounds):
            for mode in MODES:
                subprocess.run([sys.executable, __file__, "--mode", mode, "--db", str(work), "--days", str(args.days),
                                "--seconds", str(args.seconds)], check=True)  # fmt: skip
    finally:
        work.unlink(missing_ok=True)
        Path(str(work) + ".wal").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
