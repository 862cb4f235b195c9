"""OTLP-JSON ingest benchmark: spanprism's end-to-end ingest vs a bare orjson parse vs DuckDB's read_json.

Run:  .venv/bin/python benchmarks/ingest.py --spans 1000000 --out /tmp/spanprism-bench

It writes an OTLP JSON-lines file (Collector file-exporter layout) of ``--spans`` realistic LLM spans with
message contents (mixed conventions, ~15 % extra non-LLM HTTP/DB/CHAIN spans), then measures, each in its own
child process so the peak-RSS numbers do not mix:

* ``orjson``  — ``orjson.loads`` of every line and a span count: the practical floor of any ingester;
* ``duckdb``  — DuckDB's own ``read_json`` of the file, unnested down to spans and counted;
* ``ingest_wN`` — ``spanprism.ingest.pipeline.ingest_paths(con, [file], workers=N)`` into a fresh DuckDB file;
* ``memcheck`` — the same ingest (1 worker) on a file 5× smaller: peak RSS should be about the same (streaming).

It prints a table and writes ``DIR/ingest_benchmark.json``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spanprism.attribution.simulator.workload import DATA_DIR

NON_LLM_RATIO = 0.15

#: convention → (share of LLM spans, services using it). Chunk-event conventions are rarer: their spans are big.
MIX: dict[str, tuple[float, tuple[str, ...]]] = {
    "otel_semconv": (0.24, ("checkout-assistant", "search-rerank")),
    "otel_semconv_legacy": (0.10, ("billing-bot",)),
    "openinference": (0.20, ("rag-api", "docs-qa")),
    "openllmetry": (0.06, ("support-agent",)),
    "openllmetry_legacy": (0.03, ("legacy-summarizer",)),
    "openlit": (0.13, ("email-drafter",)),
    "langfuse": (0.14, ("tutor-app",)),
    "vllm": (0.10, ("vllm-gateway",)),
}
#: (provider, request model, response model, host, region, deployment, fingerprint)
ROUTES = (
    ("openai", "gpt-4o", "gpt-4o-2024-08-06", "api.openai.com", None, None, "fp_f85bea6784"),
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "api.openai.com", None, None, "fp_0ba0d124f1"),
    ("azure.ai.openai", "gpt-4o", "gpt-4o-2024-11-20", "contoso-eus2.openai.azure.com", "eastus2", "gpt4o", "fp_b7"),
    ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "api.anthropic.com", None, None, None),
    (
        "aws.bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "bedrock-runtime.us-west-2.amazonaws.com",
        "us-west-2",
        None,
        None,
    ),
)


def _load_samples() -> tuple[list[int], list[tuple[float, float, int]]]:
    """Real prompt lengths (Mooncake) and real TTFT / ITL / output lengths (LLMPerf), from the slices bundled with
    the simulator (``attribution/simulator/data``, with their licences and source)."""
    with gzip.open(DATA_DIR / "mooncake_conversation_trace.jsonl.gz", "rb") as fh:
        inputs = [min(32000, json.loads(line)["input_length"]) for line in fh]
    latencies = []
    with gzip.open(DATA_DIR / "llmperf_requests.csv.gz", "rt", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            if not rec["error_code"] and rec["ttft_s"] and int(rec["number_output_tokens"] or 0) > 1:
                latencies.append((float(rec["ttft_s"]) * 1000, float(rec["inter_token_latency_s"]) * 1000,
                                  int(rec["number_output_tokens"])))  # fmt: skip
    return inputs, latencies


def iter_rows(n: int, seed: int) -> Iterator[dict[str, Any]]:
    """``n`` canonical llm_calls rows: real length/latency samples, mixed providers, 70 % streaming, 2 % errors."""
    rng = random.Random(seed)
    inputs, latencies = _load_samples()
    conventions = list(MIX)
    weights = [MIX[c][0] for c in conventions]
    t0 = 1_795_000_000_000_000  # epoch µs (Nov 2026)
    for i in range(n):
        conv = rng.choices(conventions, weights)[0]
        provider, req, resp, host, region, dep, fp = rng.choice(ROUTES)
        inp = rng.choice(inputs)
        ttft, itl, out = rng.choice(latencies)
        ttft *= 1.0 + inp / 16000  # prefill grows with the prompt
        streaming = rng.random() < 0.7
        cached = (rng.choice((0, 0, 1, 2, 3)) * inp // 4) // 128 * 128
        row: dict[str, Any] = {
            "trace_id": f"{rng.getrandbits(128) | 1:032x}",
            "span_id": f"{rng.getrandbits(64) | 1:016x}",
            "parent_span_id": f"{rng.getrandbits(64) | 1:016x}",
            "service": rng.choice(MIX[conv][1]),
            "source_convention": conv,
            "operation": "chat",
            "provider": provider,
            "request_model": req,
            "response_model": resp,
            "system_fingerprint": fp,
            "server_address": host,
            "region": region,
            "deployment": dep,
            "prompt_key": f"prompt_v{i % 7}",
            "start_time": t0 + i * 20_000,
            "streaming": streaming,
            "status": "ok",
            "finish_reason": "stop",
            "input_tokens": inp,
            "cache_read_tokens": cached,
            "output_tokens": out,
            "response_id": f"chatcmpl-{i:x}",
            "session_id": f"s{i % 997}",
            "ttft_ms": ttft if streaming else None,
            "itl_ms": itl if streaming else None,
            "itl_p95_ms": itl * 1.7 if streaming else None,
            "queue_ms": rng.uniform(0, 30),
            "duration_ms": ttft + itl * (out - 1) + 1.0,
        }
        if rng.random() < 0.02:
            row.update(
                status="error",
                error_type="RateLimitError",
                input_tokens=None,
                output_tokens=None,
                cache_read_tokens=None,
                ttft_ms=None,
                itl_ms=None,
                itl_p95_ms=None,
                finish_reason=None,
            )
        yield row


def generate(path: Path, llm_spans: int, seed: int) -> dict[str, Any]:
    """Write the export file (skipped when an identical one exists) and describe it."""
    from spanprism.attribution.simulator.otlp.writer import write_export

    meta = path.with_suffix(".meta.json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("llm_spans") == llm_spans and info.get("seed") == seed and info.get("bytes") == path.stat().st_size:
            return info | {"reused": True}
    started = time.perf_counter()
    counts = write_export(
        path,
        iter_rows(llm_spans, seed),
        lambda r: r["source_convention"],
        with_content=True,
        extra_non_llm=NON_LLM_RATIO,
        spans_per_line=50,
        seed=seed,
    )
    info = {
        "llm_spans": counts.llm_spans,
        "non_llm_spans": counts.non_llm_spans,
        "lines": counts.lines,
        "bytes": counts.bytes,
        "seed": seed,
        "seconds": time.perf_counter() - started,
    }
    meta.write_text(json.dumps(info))
    return info


# --- child-process measurements --------------------------------------------------------------------------------


def _peaks() -> dict[str, float]:
    """Peak RSS (MiB) of this process and of its largest finished child (ingest worker processes)."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mib": self_kb / 1024, "peak_worker_rss_mib": kids_kb / 1024}


def child_orjson(path: str) -> dict[str, Any]:
    import orjson

    spans = 0
    with open(path, "rb") as fh:
        for line in fh:
            for rs in orjson.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    spans += len(ss["spans"])
    return {"spans": spans}


def child_duckdb(path: str, scratch: str) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect(scratch)  # a file, so DuckDB may spill instead of failing on memory
    sql = """
        SELECT count(*) FROM (
          SELECT unnest(ss.spans) AS span FROM (
            SELECT unnest(rs.scopeSpans) AS ss FROM (
              SELECT unnest(resourceSpans) AS rs
              FROM read_json(?, format = 'newline_delimited', maximum_object_size = 268435456))))"""
    try:
        spans = con.execute(sql, [path]).fetchone()[0]
    except duckdb.Error as exc:  # report, do not hide: read_json's schema inference is part of what is measured
        return {"spans": 0, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    finally:
        con.close()
    return {"spans": int(spans)}


def child_ingest(path: str, workers: int, db: str) -> dict[str, Any]:
    from spanprism.api.storage.connect import open_db
    from spanprism.ingest.pipeline import ingest_paths

    for leftover in (db, db + ".wal"):
        Path(leftover).unlink(missing_ok=True)
    con = open_db(db)  # migrations run before the clock starts
    started = time.perf_counter()
    summary = ingest_paths(con, [path], workers=workers)
    seconds = time.perf_counter() - started
    stored = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    con.close()
    return {
        "spans": summary.spans_seen,
        "calls_stored": summary.calls_stored,
        "stored_rows": int(stored),
        "non_llm_skipped": summary.non_llm_skipped,
        "quarantined": summary.quarantined,
        "seconds": seconds,
    }


def _child_main(argv: list[str]) -> None:
    mode, path, *rest = argv
    started = time.perf_counter()
    if mode == "orjson":
        out = child_orjson(path)
    elif mode == "duckdb":
        out = child_duckdb(path, rest[0])
    else:
        out = child_ingest(path, int(rest[0]), rest[1])
    out.setdefault("seconds", time.perf_counter() - started)
    print(json.dumps(out | _peaks()))


def run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"spans": 0, "seconds": float("nan"), "error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- orchestration ---------------------------------------------------------------------------------------------


def measure(out: Path, spans: int, seed: int, workers: list[int], memcheck: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    big = out / f"otlp_{spans}.jsonl"
    results: dict[str, Any] = {"file": {"path": str(big)} | generate(big, spans, seed), "runs": {}}
    runs = results["runs"]
    runs["orjson"] = run_child("orjson", str(big))
    runs["duckdb_read_json"] = run_child("duckdb", str(big), str(out / "duckdb_scratch.duckdb"))
    for n in workers:
        runs[f"ingest_w{n}"] = run_child("ingest", str(big), str(n), str(out / f"bench_w{n}.duckdb"))
    if memcheck:
        small = out / f"otlp_{spans // 5}.jsonl"
        results["memcheck_file"] = {"path": str(small)} | generate(small, spans // 5, seed + 1)
        runs["memcheck_w1_small"] = run_child("ingest", str(small), "1", str(out / "bench_small.duckdb"))
    floor = runs["orjson"].get("spans", 0) / runs["orjson"]["seconds"] if runs["orjson"].get("spans") else None
    for run in runs.values():
        run["spans_per_s"] = run["spans"] / run["seconds"] if run.get("spans") and run.get("seconds") else None
        run["ratio_to_orjson"] = run["spans_per_s"] / floor if floor and run["spans_per_s"] else None
    return results


def print_table(results: dict[str, Any]) -> None:
    info = results["file"]
    total = info["llm_spans"] + info["non_llm_spans"]
    print(
        f"\nfile: {info['path']}  {total:,} spans ({info['llm_spans']:,} LLM), {info['bytes'] / 2**20:,.0f} MiB, "
        f"{info['bytes'] / total:,.0f} B/span, written in {info['seconds']:.0f} s"
    )
    print(f"{'run':<20}{'spans':>11}{'seconds':>9}{'spans/s':>10}{'vs orjson':>10}{'peak RSS':>10}{'workers':>9}")
    for name, run in results["runs"].items():
        rate, ratio = run.get("spans_per_s"), run.get("ratio_to_orjson")
        print(
            f"{name:<20}{run.get('spans', 0):>11,}{run.get('seconds', float('nan')):>9.1f}"
            f"{(f'{rate:,.0f}' if rate else '-'):>10}{(f'{ratio:.0%}' if ratio else '-'):>10}"
            f"{run.get('peak_rss_mib', float('nan')):>8.0f}Mi{run.get('peak_worker_rss_mib', 0):>7.0f}Mi"
        )
        if run.get("error"):
            print(f"    error: {run['error']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="example: benchmarks/ingest.py --spans 200000 --out /tmp/bench"
    )
    parser.add_argument("--spans", type=int, default=1_000_000, help="LLM spans in the main file (default 1,000,000)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/spanprism-bench"), help="working folder")
    parser.add_argument("--workers", default="1,2", help="comma-separated ingest worker counts (default 1,2)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-memcheck", action="store_true", help="skip the 5× smaller file RSS comparison")
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w]
    results = measure(args.out, args.spans, args.seed, workers, not args.no_memcheck)
    print_table(results)
    (args.out / "ingest_benchmark.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out / 'ingest_benchmark.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
