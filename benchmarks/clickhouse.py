"""ClickHouse store vs DuckDB, side by side in one run: ingest (the one writer) and the rollup pass.

    .venv/bin/python benchmarks/clickhouse.py --series 1000 --days 30 --calls-per-hour 6
    .venv/bin/python benchmarks/clickhouse.py --clickhouse-url http://default:@ch:8123/bench   # a real server

Canonical ``llm_calls`` rows are generated directly (seeded; N series × D days, ``--calls-per-hour`` calls per
series and hour, lognormal latencies, token counts with cache reads, 2 % errors, three regions), in time order, in
write units of ``--batch-rows`` rows, as a file ingest or the OTLP receiver hands them to the writer. Decode and
normalize are left out: they are the same Python for both engines (benchmarks/ingest.py measures them).

Rows, each engine in turn:

* ``ingest``: ``ingest.load.store_batches`` of every unit into a fresh store: DuckDB (the file) or ClickHouse (the
  calls; the DuckDB file keeps the batch rows). ClickHouse's path includes the fold lookup (stored rows sharing a
  trace id, read back with FINAL) and the Arrow insert.
* ``rollups (full)``: ``refresh_rollups`` of everything (5 min and 1 h grains): on ClickHouse the aggregation runs
  there with FINAL and exact quantiles, and the bucket rows are written to DuckDB.
* ``ingest 1 h`` + ``rollups (1 h)``: one more hour of every series, then the incremental refresh (only the touched
  windows): the steady-state cost of a scheduled pass.
* ``detect``: baselines and detection over all series (rollups are local either way; sparse series read calls).
* ``1 shard`` (ClickHouse only: workers need it): a worker's first claim of shard 0 of 64 on a fresh cache file
  (``refresh_series_rollups`` of that shard's series over all history, after the series registry), beside the
  full pass: the shard filter is pushed down to ClickHouse.

Without ``--clickhouse-url`` the engine is chDB (ClickHouse 26.x in-process) served over loopback HTTP by
``tests/support/clickhouse.py``, started as a process of its own: the numbers include that endpoint's overhead
(each insert body is written to a file and read back with ``file()``), so they bound a real server from below.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from spanprism.api.cli import main as cli
from spanprism.api.storage.connect import open_db
from spanprism.attribution.passes import shards
from spanprism.attribution.passes.detect_pass import run_attribution
from spanprism.attribution.store import calls as calls_store
from spanprism.attribution.store.rollups import refresh_rollups, refresh_series_rollups, register_series
from spanprism.ingest import otel_traces
from spanprism.ingest.load import store_batches
from spanprism.ingest.pipeline import ingest_paths
from spanprism.ingest.records import Batch
from spanprism.models import clickhouse
from spanprism.models.schema import conform

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 9, 1, tzinfo=UTC)
REGIONS = ("eastus2", "westeurope", "swedencentral")


def _hex(rng: np.random.Generator, n: int, width: int) -> list[str]:
    raw = rng.integers(0, 2**63, size=(n, width // 16), dtype=np.int64)
    return ["".join(f"{v:016x}" for v in row) for row in raw]


def generate(series: int, days: float, per_hour: float, seed: int, *, offset_h: float = 0.0) -> pa.Table:
    """Calls of ``series`` series over ``days`` days starting ``offset_h`` hours after START, in time order."""
    rng = np.random.default_rng(seed)
    hours = days * 24
    n = int(series * hours * per_hour)
    idx = rng.integers(0, series, n)
    t_us = np.sort(rng.uniform(offset_h * 3600e6, (offset_h + hours) * 3600e6, n)).astype(np.int64)
    base = 400 + (idx % 17) * 60.0
    ttft = rng.lognormal(np.log(base), 0.35)
    out_tok = rng.integers(20, 800, n)
    itl = rng.lognormal(np.log(12 + (idx % 5)), 0.2)
    inp = rng.integers(200, 6000, n)
    cached = np.where(rng.random(n) < 0.6, (inp * rng.uniform(0.3, 0.9, n)).astype(np.int64), 0)
    status = np.where(rng.random(n) < 0.02, "error", "ok")
    table = pa.table({
        "trace_id": _hex(rng, n, 32), "span_id": _hex(rng, n, 16),
        "service": [f"svc-{i // 4:04d}" for i in idx], "provider": ["azure.ai.openai"] * n,
        "request_model": [("gpt-4o", "gpt-4o-mini", "o3", "gpt-4.1")[i % 4] for i in idx], "operation": ["chat"] * n,
        "response_model": ["gpt-4o-2024-11-20"] * n, "region": [REGIONS[i] for i in rng.integers(0, 3, n)],
        "server_address": ["contoso.openai.azure.com"] * n,
        "start_time": pa.array(t_us + int(START.timestamp() * 1e6), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "duration_ms": ttft + itl * out_tok, "ttft_ms": ttft, "itl_ms": itl, "decode_ms": itl * out_tok,
        "streaming": [True] * n, "status": status, "input_tokens": inp, "cache_read_tokens": cached,
        "uncached_input_tokens": inp - cached, "output_tokens": out_tok, "source_convention": ["otel_semconv"] * n,
    })  # fmt: skip
    return conform(table)


def units(table: pa.Table, rows: int) -> Iterator[Batch]:
    for start in range(0, table.num_rows, rows):
        part = table.slice(start, rows)
        yield Batch(source="bench", calls=part, quarantined=[], spans_seen=part.num_rows)


@contextmanager
def chdb_endpoint(data_dir: str) -> Iterator[str]:
    """tests/support/clickhouse.py in a process of its own; yields its URL."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "clickhouse.py"), data_dir],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        yield url
    finally:
        proc.kill()
        proc.wait()


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def run_engine(name: str, calls: pa.Table, extra: pa.Table, args: argparse.Namespace, work: Path,
               store: clickhouse.ClickHouseStore | None) -> dict[str, Any]:  # fmt: skip
    con = open_db(work / f"{name}.duckdb")
    previous = clickhouse.bind(store)
    try:
        t_ingest, _ = _timed(lambda: [store_batches(con, [b]) for b in units(calls, args.batch_rows)])
        t_roll, refresh = _timed(lambda: refresh_rollups(con))
        t_ingest_h, _ = _timed(lambda: [store_batches(con, [b]) for b in units(extra, args.batch_rows)])
        t_roll_h, refresh_h = _timed(lambda: refresh_rollups(con))
        t_detect, summary = (0.0, None) if args.skip_detect else _timed(lambda: run_attribution(con))
        keys = shards.keys_of(0, [r[0] for r in con.execute("SELECT series_key FROM series").fetchall()])
        t_shard = _first_claim(work / f"{name}-worker.duckdb", keys) if store is not None else None
        rollup_rows = con.execute("SELECT count(*) FROM series_rollups").fetchall()[0][0]
        digest = con.execute("SELECT sum(n_calls), sum(e2e_p95_ms), sum(ttft_p50_ms) FROM series_rollups").fetchall()[0]
    finally:
        clickhouse.bind(previous)
        con.close()
    return {"engine": name, "ingest_s": t_ingest, "rows": calls.num_rows, "rollups_s": t_roll,
            "rollup_rows": rollup_rows, "series": refresh.series, "ingest_1h_s": t_ingest_h, "rows_1h": extra.num_rows,
            "rollups_1h_s": t_roll_h, "windows_1h": len(refresh_h.windows), "detect_s": t_detect,
            "shard_series": len(keys), "shard_rollups_s": t_shard,
            "regressions": summary.regressions_open + summary.regressions_resolved if summary else None,
            "digest": digest}  # fmt: skip


def run_source(args: argparse.Namespace, work: Path, url: str) -> dict[str, Any]:
    """``source`` mode against the file ingest of the same spans: a simulated export (every convention of the
    simulator) ingested from its files into DuckDB, and put in ``otel_traces`` (exporter layout) then followed."""
    sim = work / "sim"
    assert cli(["--db", str(work / "sim.duckdb"), "simulate", "--out", str(sim), "--seed", "3", "--days",
                str(args.source_days), "--series", "8", "--conventions",
                "otel_semconv,openllmetry,openlit,openinference,langfuse"]) == 0  # fmt: skip
    spans = otel_traces.spans_of_files([str(sim)])
    con = open_db(work / "files.duckdb")
    try:
        t_file, summary = _timed(lambda: ingest_paths(con, [str(sim)], workers=1))
    finally:
        con.close()
    store = clickhouse.connect(url)
    store.command(otel_traces.otel_traces_ddl())
    for start in range(0, len(spans), 50_000):
        store.insert("otel_traces", otel_traces.exporter_rows(spans[start : start + 50_000]))
    con = open_db(work / "source.duckdb")
    previous = clickhouse.bind(store)
    try:
        t_source, run = _timed(lambda: otel_traces.follow(con, store, slice_s=3600))
    finally:
        clickhouse.bind(previous)
        con.close()
        store.close()
    return {"spans": len(spans), "calls_file": summary.calls_stored, "calls_source": run.calls_stored,
            "file_ingest_s": t_file, "source_s": t_source, "candidates_read": run.spans_read}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--calls-per-hour", type=float, default=6, help="per series (default 6: one call a 10 min)")
    parser.add_argument("--batch-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--clickhouse-url", help="a real ClickHouse (an empty database); default: chDB over HTTP")
    parser.add_argument(
        "--source-days",
        type=float,
        default=0,
        help="also time `source` mode on a simulated export of this many days (8 series)",
    )
    parser.add_argument("--skip-detect", action="store_true", help="leave out the detect row (benchmarks/attribute.py)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    calls = generate(args.series, args.days, args.calls_per_hour, args.seed)
    extra = generate(args.series, 1 / 24, args.calls_per_hour, args.seed + 1, offset_h=args.days * 24)
    print(f"{args.series} series × {args.days:g} days, {calls.num_rows:,} calls (+{extra.num_rows:,} in the next hour);"
          f" load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)  # fmt: skip
    results: list[dict[str, Any]] = []
    source = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results.append(run_engine("duckdb", calls, extra, args, work, None))
        print(json.dumps(results[-1], default=str), flush=True)
        with chdb_endpoint(str(work / "chdb")) if not args.clickhouse_url else _given(args.clickhouse_url) as url:
            store = clickhouse.connect(url)
            results.append(run_engine("clickhouse", calls, extra, args, work, store))
            store.close()
            print(json.dumps(results[-1], default=str), flush=True)
            source = run_source(args, work, url) if args.source_days else None
    _report(results, args)
    if source:
        file_rate, source_rate = source["spans"] / source["file_ingest_s"], source["spans"] / source["source_s"]
        print(f"\nsource mode, {source['spans']:,} spans ({source['candidates_read']:,} candidates read):"
              f" file ingest into DuckDB {source['file_ingest_s']:.1f} s ({file_rate:,.0f} spans/s,"
              f" {source['calls_file']:,} calls); otel_traces into ClickHouse {source['source_s']:.1f} s"
              f" ({source_rate:,.0f} spans/s, {source['calls_source']:,} calls)")  # fmt: skip
        results.append({"engine": "source", **source})
    if args.out:
        Path(args.out).write_text(json.dumps(results, default=str, indent=2))


def _first_claim(path: Path, keys: list[str]) -> float:
    """A worker's first claim of a shard on a fresh cache: the series registry, then the shard's rollups over all
    history; seconds of the latter."""
    worker = open_db(path)
    try:
        span = calls_store.data_span(worker)
        register_series(worker, span[0], span[1])  # type: ignore[index]
        t, _ = _timed(lambda: refresh_series_rollups(worker, keys, None))
        return t
    finally:
        worker.close()


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    series_days = args.series * args.days
    print(f"\n{'engine':<11}{'ingest s':>10}{'calls/s':>11}{'µs/call':>9}{'rollups s':>11}{'ms/series-day':>15}"
          f"{'+1 h ingest s':>15}{'+1 h rollups s':>16}{'detect s':>10}{'ms/series':>11}"
          f"{'1 shard s':>11}{'shard/full':>12}")  # fmt: skip
    for r in results:
        shard = r["shard_rollups_s"]
        tail = (f"{shard:>11.2f}{shard / r['rollups_s']:>12.3f}  ({r['shard_series']} of {r['series']} series in"
                f" shard 0)") if shard else ""  # fmt: skip
        print(f"{r['engine']:<11}{r['ingest_s']:>10.1f}{r['rows'] / r['ingest_s']:>11,.0f}"
              f"{r['ingest_s'] / r['rows'] * 1e6:>9.1f}{r['rollups_s']:>11.1f}"
              f"{r['rollups_s'] / series_days * 1e3:>15.2f}{r['ingest_1h_s']:>15.2f}{r['rollups_1h_s']:>16.2f}"
              f"{r['detect_s']:>10.1f}{r['detect_s'] / max(r['series'], 1) * 1e3:>11.1f}"
              f"{tail}")  # fmt: skip
    same = {tuple(round(float(x), 3) for x in r["digest"]) for r in results}
    print(f"rollup digests (sum of n_calls, e2e p95, TTFT p50) {'agree' if len(same) == 1 else 'DIFFER'}: {same}")


if __name__ == "__main__":
    main()
