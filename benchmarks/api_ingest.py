"""OTLP/HTTP ingest benchmark: spans/s stored through ``POST /v1/traces`` vs the same work in-process.

Run:  .venv/bin/python benchmarks/api_ingest.py --bodies 120 --clients 4 --workers 1,2

Builds ``--bodies`` pre-encoded protobuf ExportTraceServiceRequests of ``--spans-per-body`` GenAI-semconv chat
spans each (OTel SDK spans, realistic attributes, a non-LLM HTTP child for every 4th call; unique ids per
body), then measures side by side in one run:

* ``decode``        — ``spanprism.ingest.otlp_http.process_body`` (decode + normalize) of every body in this process:
                      the CPU floor of the receiver, no HTTP, no storage;
* ``decode+store``  — the same, then ``spanprism.ingest.load.store_batches`` of each body into a fresh DuckDB file;
* ``http_wN``       — a real ``spanprism serve`` subprocess (``ingest_workers=N``) and ``--clients`` threads
                      posting the bodies; a body counts once it is acknowledged (after its commit). 503 answers
                      are retried after a short pause and counted.

Prints a table (spans/s are spans seen; LLM calls stored are printed too). Bounded: every run takes each body
once; the whole script stays well under two minutes at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, set_span_in_context

from spanprism.api.server import free_port, wait_healthy
from spanprism.api.storage.connect import open_db
from spanprism.ingest.load import store_batches
from spanprism.ingest.otlp_http import process_body
from spanprism.ingest.pipeline import ingest_paths

KEY = "bench-admin-key"
PROTO = "application/x-protobuf"
T0 = 1_764_000_000_000_000_000


_WORDS = ("the", "order", "refund", "customer", "shipping", "please", "summarize", "invoice", "account", "policy",
          "delivery", "status", "update", "return", "window", "days", "item", "support", "ticket", "reply")  # fmt: skip


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    while sum(map(len, words)) + len(words) < chars:
        words.append(rng.choice(_WORDS))
    return " ".join(words)


def message_contents(rng: random.Random) -> dict[str, str]:
    """What GenAI instrumentations record with content capture on (semconv ``gen_ai.*.messages``, JSON strings):
    a system prompt, the user's turn and the model's answer, ~1.1 KB together."""
    system = [{"type": "text", "content": _text(rng, 260)}]
    user = [{"role": "user", "parts": [{"type": "text", "content": _text(rng, rng.randint(300, 520))}]}]
    answer = [{"role": "assistant", "parts": [{"type": "text", "content": _text(rng, rng.randint(180, 360))}],
               "finish_reason": "stop"}]  # fmt: skip
    return {"gen_ai.system_instructions": json.dumps(system), "gen_ai.input.messages": json.dumps(user),
            "gen_ai.output.messages": json.dumps(answer)}  # fmt: skip


def template(spans: int, seed: int, *, heavy: bool = False) -> ExportTraceServiceRequest:
    """One request of ``spans`` spans (LLM calls plus a non-LLM child for every 4th) made by the real SDK;
    ``heavy`` LLM spans carry message contents (~1.3 KB a span on the wire instead of ~0.45 KB)."""
    rng = random.Random(seed)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-chat", "cloud.region": "eastus2"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    llm = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0")
    http = provider.get_tracer("opentelemetry.instrumentation.httpx")
    made = 0
    while made < spans:
        start = T0 + made * 50_000_000
        prompt, cached, output = rng.randint(200, 8000), rng.choice([0, 0, 1024, 2048]), rng.randint(10, 600)
        attrs = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": prompt,
            "gen_ai.usage.cache_read.input_tokens": min(cached, prompt),
            "gen_ai.usage.output_tokens": output,
            "gen_ai.response.finish_reasons": ("stop",),
            "gen_ai.response.id": f"chatcmpl-{made:012d}",
            "gen_ai.openai.response.system_fingerprint": "fp_f85bea6784",
            "server.address": "api.openai.com",
            "server.port": 443,
            "gen_ai.request.temperature": 0.2,
            "gen_ai.request.max_tokens": 1024,
            **(message_contents(rng) if heavy else {}),
        }
        span = llm.start_span("chat gpt-4o", kind=SpanKind.CLIENT, attributes=attrs, start_time=start)
        made += 1
        if made % 4 == 0 and made < spans:
            child = http.start_span("POST", context=set_span_in_context(span), kind=SpanKind.CLIENT, start_time=start)
            child.end(end_time=start + 1_000_000)
            made += 1
        span.end(end_time=start + rng.randint(300, 4000) * 1_000_000)
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def numbered(base: ExportTraceServiceRequest, n: int, *, shift: int | None = None) -> bytes:
    """``base`` serialized with trace, span and response ids of its own (copy ``n``): every copy is new calls.

    Times move on by the template's span of time per copy (``shift`` copies; default ``n``), as live traffic does:
    copies at the same instants would all fall in the loader's fold window (``ingest/fold.py``) of one another.
    """
    request = ExportTraceServiceRequest()
    request.CopyFrom(base)
    spans = [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
    offset = (n if shift is None else shift) * (max(s.end_time_unix_nano for s in spans) - T0)
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.start_time_unix_nano += offset
                span.end_time_unix_nano += offset
                span.trace_id = n.to_bytes(8, "big") + span.trace_id[8:]
                if span.parent_span_id:
                    span.parent_span_id = bytes([n % 251 + 1]) + span.parent_span_id[1:]
                span.span_id = bytes([n % 251 + 1]) + span.span_id[1:]
                for kv in span.attributes:
                    if kv.key == "gen_ai.response.id":  # one provider response id = one call (ingest/fold.py)
                        kv.value.string_value = f"{kv.value.string_value}-{n}"
    return request.SerializeToString()


def bodies(count: int, spans: int, seed: int, *, heavy: bool = False) -> list[bytes]:
    """``count`` serialized copies of the template, each with its own trace and span ids."""
    base = template(spans, seed, heavy=heavy)
    return [numbered(base, n) for n in range(count)]


def run_file(payloads: list[bytes], workers: int, workdir: Path) -> tuple[int, int, float]:
    """``spanprism ingest`` of the same spans from a file: the bodies as length-prefixed records (the Collector
    file exporter's ``format: proto``), through ``ingest_paths`` as the CLI calls it."""
    path = workdir / "spans.binpb"
    with path.open("wb") as out:
        for body in payloads:
            out.write(len(body).to_bytes(4, "big") + body)
    con = open_db(workdir / f"file_w{workers}.duckdb")
    try:
        t0 = time.perf_counter()
        summary = ingest_paths(con, [path], workers=workers)
        elapsed = time.perf_counter() - t0
    finally:
        con.close()
    return summary.spans_seen, summary.calls_stored, elapsed


def run_inprocess(payloads: list[bytes], store: bool, workdir: Path) -> tuple[int, int, float]:
    con = open_db(workdir / "inprocess.duckdb") if store else None
    seen = calls = 0
    t0 = time.perf_counter()
    for body in payloads:
        out = process_body(body, source="bench", content_type=PROTO, content_encoding=None, limit=64 << 20,
                           tenant_attribute=None)  # fmt: skip
        seen += out.spans_seen
        if con is not None:
            calls += store_batches(con, [out])[0].calls_stored
        else:
            calls += out.calls.num_rows
    elapsed = time.perf_counter() - t0
    if con is not None:
        con.close()
    return seen, calls, elapsed


def _serve(db: Path, port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SPANPRISM_ADMIN_KEY": KEY, "SPANPRISM_INGEST_WORKERS": str(workers)}
    cmd = [str(Path(sys.executable).parent / "spanprism"), "--db", str(db), "serve", "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    if wait_healthy(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None):
        return proc
    proc.kill()
    raise RuntimeError(f"server did not start; see {log}")


def _client(url: str, work: queue.Queue[bytes], retries: list[int], errors: list[str]) -> None:
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}", "content-type": PROTO},
                      timeout=60) as client:  # fmt: skip
        while True:
            try:
                body = work.get_nowait()
            except queue.Empty:
                return
            for _ in range(200):  # bounded retries on 503
                reply = client.post("/v1/traces", content=body)
                if reply.status_code != 503:
                    break
                retries.append(1)
                time.sleep(0.05)
            if reply.status_code != 200:
                errors.append(f"{reply.status_code}: {reply.text[:200]}")


def run_http(payloads: list[bytes], workers: int, clients: int, workdir: Path) -> tuple[int, int, float, int]:
    port, db = free_port(), workdir / f"http_w{workers}_c{clients}.duckdb"
    proc = _serve(db, port, workers, workdir / f"serve_w{workers}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        warm = httpx.post(f"{url}/v1/traces", content=payloads[0], timeout=60,
                          headers={"authorization": f"Bearer {KEY}", "content-type": PROTO})  # fmt: skip
        warm.raise_for_status()  # also starts the decode worker processes
        before = httpx.get(f"{url}/metrics", timeout=10).text
        work: queue.Queue[bytes] = queue.Queue()
        for body in payloads[1:]:
            work.put(body)
        retries: list[int] = []
        errors: list[str] = []
        threads = [threading.Thread(target=_client, args=(url, work, retries, errors)) for _ in range(clients)]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        proc.terminate()
        proc.wait(30)
    received, stored = (
        _metric(metrics, name) - _metric(before, name)  # the warm-up body is not counted
        for name in ("spanprism_spans_received_total", "spanprism_calls_stored_total")
    )
    return int(received), int(stored), elapsed, len(retries)


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=int, default=120, help="request bodies (default 120)")
    parser.add_argument("--spans-per-body", type=int, help="default 500, or 1000 with --heavy")
    parser.add_argument("--heavy", action="store_true", help="LLM spans with message contents (~1.3 KB a span)")
    parser.add_argument("--clients", default="4", help="concurrent client threads, e.g. 1,4 (default 4)")
    parser.add_argument("--workers", default="1,2", help="server ingest_workers values to measure (default 1,2)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    per_body = args.spans_per_body or (1000 if args.heavy else 500)
    payloads = bodies(args.bodies, per_body, args.seed, heavy=args.heavy)
    size = sum(map(len, payloads)) / len(payloads)
    print(f"{len(payloads)} bodies x {per_body} spans, {size / 1024:.0f} KiB each ({size / per_body:.0f} B a span, "
          f"protobuf); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="spanprism-api-bench-") as tmp:
        workdir = Path(tmp)
        seen, calls, secs = run_inprocess(payloads, False, workdir)
        rows.append(("decode (in-process)", seen, calls, secs, 0))
        seen, calls, secs = run_inprocess(payloads, True, workdir)
        rows.append(("decode+store (in-process)", seen, calls, secs, 0))
        for workers in (int(w) for w in args.workers.split(",")):
            seen, calls, secs = run_file(payloads, workers, workdir)
            rows.append((f"file ingest_w{workers}", seen, calls, secs, 0))
            for clients in (int(c) for c in args.clients.split(",")):
                seen, calls, secs, retries = run_http(payloads, workers, clients, workdir)
                rows.append((f"http_w{workers} ({clients} clients)", seen, calls, secs, retries))
    print(f"{'run':<30}{'spans':>10}{'calls':>10}{'seconds':>10}{'spans/s':>10}{'vs decode':>11}{'503s':>7}")
    floor = rows[0][1] / rows[0][3]
    for name, seen, calls, secs, retries in rows:
        rate = seen / secs
        print(f"{name:<30}{seen:>10,}{calls:>10,}{secs:>10.2f}{rate:>10,.0f}{rate / floor:>10.0%}{retries:>7}")


if __name__ == "__main__":
    main()
