"""The timing loops the benchmarks share: HTTP GETs over client threads, in-process calls, and the result rows.

``api_query.py`` and ``web_regression.py`` both measure a live server from Python threads (each with its own
keep-alive connection) and print p50/p95/max rows; one implementation here, so their numbers mean the same thing.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx


def measure_gets(url: str, make_path: Callable[[int], str], *, clients: int, requests: int,
                 client_kwargs: Mapping[str, Any] | None = None,
                 check: Callable[[httpx.Response], bool] | None = None) -> list[float]:  # fmt: skip
    """Latencies (ms) of ``requests`` GETs of ``make_path(i)`` spread over ``clients`` threads.

    Each thread holds one ``httpx.Client`` (``client_kwargs``: headers, cookies) for all its requests. A non-200
    answer, or one ``check`` rejects, stops the run with an error: a benchmark of failing requests means nothing.
    """
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60, **dict(client_kwargs or {})) as client:
            while not errors:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                resp = client.get(make_path(i))
                dt = (time.perf_counter() - t0) * 1000
                if resp.status_code != 200 or (check is not None and not check(resp)):
                    errors.append(f"{make_path(i)} → {resp.status_code} {resp.text[:200]}")
                    return
                with lock:
                    latencies.append(dt)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return latencies


def measure_calls(fns: Mapping[str, Callable[[int], object]], requests: int) -> dict[str, list[float]]:
    """Latencies (ms) of each ``fn(i)`` for i in range(requests), the functions taking turns request by request.

    Interleaving puts every variant under the same background load, so their ratio holds on a busy machine.
    """
    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(requests):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(i)
            out[name].append((time.perf_counter() - t0) * 1000)
    return out


def measure_steps(paths: Mapping[str, Callable[[int], Mapping[str, Callable[[], object]]]],
                  requests: int) -> dict[str, list[float]]:  # fmt: skip
    """Latencies (ms) of each step of several multi-step paths, as ``"path:step"``, the paths taking turns.

    ``paths[name](i)`` returns the ordered steps of request ``i`` (each may depend on the ones before it).
    """
    out: dict[str, list[float]] = {}
    for i in range(requests):
        for name, make in paths.items():
            for step, fn in make(i).items():
                t0 = time.perf_counter()
                fn()
                out.setdefault(f"{name}:{step}", []).append((time.perf_counter() - t0) * 1000)
    return out


def quantiles(latencies: list[float]) -> tuple[float, float, float]:
    """(p50, p95, max) in ms."""
    q = statistics.quantiles(latencies, n=100)
    return q[49], q[94], max(latencies)


def row(*cells: object, latencies: list[float]) -> str:
    """A markdown table row: the leading cells, the count, then p50 / p95 / max."""
    p50, p95, top = quantiles(latencies)
    return "| " + " | ".join([*(str(c) for c in cells), str(len(latencies)), f"{p50:.1f}", f"{p95:.1f}",
                              f"{top:.1f}"]) + " |"  # fmt: skip
