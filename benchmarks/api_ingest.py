"""OTLP/HTTP ingest benchmark: spans/s stored through ``POST /v1/traces`` vs the same work in-process.

Run:  .venv/bin/python benchmarks/api_ingest.py --bodies 120 --clients 4 --workers 1,2

Builds ``--bodies`` pre-encoded protobuf ExportTraceServiceRequests of ``--spans-per-body`` GenAI-semconv chat
spans each (OTel SDK spans, realistic attributes, a non-LLM HTTP child for every 4th call; unique ids per
body), then measures side by side in one run:

* ``decode``        — ``decode_bytes`` + ``process_decoded`` (what ``process_body`` runs: decode + normalize) of
                      every body in this process: the CPU floor of the receiver, no HTTP, no storage;
* ``decode+store``  — the same, then ``spanprism.ingest.load.store_batches`` of each body into a fresh DuckDB file;
* ``http_wN``       — a real ``spanprism serve`` subprocess (``ingest_workers=N``) and ``--clients`` threads
                      posting the bodies; a body counts once it is acknowledged (after its commit). 503 answers
                      are retried after a short pause and counted.

Prints a table (spans/s are spans seen; LLM calls stored are printed too) with the CPU each run spent per span,
load-independent where the wall-clock rate is not (the machine may be shared): for the in-process rows this
process's CPU split into decode, normalize and store; for the HTTP rows the server's main process (HTTP, the
decoded batches' unpickling, the writer) and its decode worker processes, read from ``/proc``. The load average is
printed before and after.

``--clickhouse`` runs the HTTP rows a second time with the calls written to ClickHouse (``SPANPRISM_CLICKHOUSE_URL``):
ClickHouse's engine in process (chDB) behind the loopback HTTP endpoint of ``tests/support/clickhouse.py``, as
``benchmarks/clickhouse.py`` runs it; that endpoint's CPU is printed as the engine's.

``--decoders python,native`` (the default when the native decoder is built) runs the in-process decode row and
every HTTP row once per OTLP protobuf decoder, side by side: ``native`` is the C extension
(``spanprism.ingest._otlp_native``), ``python`` the walk over the protobuf runtime's messages (its server runs from a
copy of this package without the extension, so it falls back as an install without a compiler would).

``--baseline DIR`` runs every HTTP row a second time, side by side, with a server whose ``spanprism`` package is
the one in ``DIR`` (e.g. ``git archive <commit> | tar -x -C DIR/spanprism``): before/after in one run.

Bounded: every run takes each body once; the whole script stays well under two minutes at the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from spanprism.ingest import otlp_proto
from spanprism.ingest.decode import decode_bytes
from spanprism.ingest.load import store_batches
from spanprism.ingest.pipeline import ingest_paths, process_decoded

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


def run_inprocess(payloads: list[bytes], store: bool, workdir: Path) -> tuple[int, int, float, dict[str, float]]:
    """Decode + normalize (and store) every body here; returns spans, calls, seconds and CPU seconds per stage."""
    con = open_db(workdir / "inprocess.duckdb") if store else None
    seen = calls = 0
    cpu = {"decode": 0.0, "normalize": 0.0, "store": 0.0}
    process_decoded(decode_bytes(payloads[0], "bench", PROTO), "bench", 0, None)  # first-call costs, not measured
    t0 = time.perf_counter()
    for body in payloads:
        gc.disable()  # as process_body does for the walk (ingest/otlp_http.py)
        c0 = time.process_time()
        decoded = decode_bytes(body, "bench", PROTO)
        c1 = time.process_time()
        out = process_decoded(decoded, "bench", len(body), None)
        c2 = time.process_time()
        gc.enable()
        seen += out.spans_seen
        if con is not None:
            calls += store_batches(con, [out])[0].calls_stored
        else:
            calls += out.calls.num_rows
        cpu["decode"] += c1 - c0
        cpu["normalize"] += c2 - c1
        cpu["store"] += time.process_time() - c2  # DuckDB's own threads count too (process CPU)
    elapsed = time.perf_counter() - t0
    if con is not None:
        con.close()
    return seen, calls, elapsed, cpu


def python_only_package(workdir: Path) -> Path:
    """A copy of this checkout's ``spanprism`` package without the native decoder (other folders linked)."""
    root = workdir / "python_decoder"
    package = root / "spanprism"
    package.mkdir(parents=True)
    for folder in ("api", "attribution", "models", "migrations"):
        (package / folder).symlink_to(ROOT / folder)
    shutil.copytree(ROOT / "ingest", package / "ingest", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    # The editable install's finder would still find the built extension by name: a module that refuses to import
    # stands in its place, so the copy falls back as an install without the extension does.
    (package / "ingest" / "_otlp_native.py").write_text('raise ImportError("python decoder run")\n')
    return root


@contextlib.contextmanager
def decoder(name: str) -> Iterator[None]:
    """Run this process's decoding with the ``python`` or ``native`` OTLP protobuf decoder."""
    chosen = otlp_proto.decode_request_native if name == "native" else otlp_proto.decode_request_python
    saved, otlp_proto.decode_request = otlp_proto.decode_request, chosen
    try:
        yield
    finally:
        otlp_proto.decode_request = saved


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) of one live process, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _server_cpu(pid: int) -> tuple[float, float]:
    """(main process, all its children) CPU seconds of a running server."""
    kids = 0.0
    for child in _children(pid):
        with contextlib.suppress(FileNotFoundError):  # exited meanwhile
            kids += _cpu_s(child)
    return _cpu_s(pid), kids


ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def chdb_endpoint(data_dir: Path) -> Iterator[tuple[str, int]]:
    """tests/support/clickhouse.py (chDB behind a loopback HTTP endpoint) in a process of its own: (URL, pid)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "clickhouse.py"), str(data_dir)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield proc.stdout.readline().strip(), proc.pid  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait()


def _serve(db: Path, port: int, workers: int, log: Path, package: Path | None = None,
           clickhouse_url: str | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    env = {**os.environ, "SPANPRISM_ADMIN_KEY": KEY, "SPANPRISM_INGEST_WORKERS": str(workers)}
    if clickhouse_url:
        env["SPANPRISM_CLICKHOUSE_URL"] = clickhouse_url
    if package is not None:  # another checkout's package first on the path (ahead of the editable install's finder)
        env["PYTHONPATH"] = str(package)
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


@dataclass(slots=True)
class HttpRun:
    """One HTTP row: spans received and calls stored (warm-up excluded), seconds, 503s, server CPU seconds."""

    seen: int
    calls: int
    seconds: float
    retries: int
    main_cpu: float
    worker_cpu: float
    engine_cpu: float  # the ClickHouse endpoint's process, when there is one


def run_http(payloads: list[bytes], workers: int, clients: int, workdir: Path, package: Path | None = None,
             clickhouse: bool = False, label: str = "") -> HttpRun:  # fmt: skip
    port = free_port()
    tag = f"w{workers}_c{clients}_{label}{'_ch' if clickhouse else ''}"
    with contextlib.ExitStack() as stack:
        ch_url, ch_pid = stack.enter_context(chdb_endpoint(workdir / f"chdb_{tag}")) if clickhouse else (None, 0)
        proc = _serve(workdir / f"http_{tag}.duckdb", port, workers, workdir / f"serve_{tag}.log", package, ch_url)
        return _post_all(payloads, clients, proc, port, ch_pid)


def _post_all(payloads: list[bytes], clients: int, proc: subprocess.Popen[bytes], port: int, engine: int) -> HttpRun:
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
        cpu0 = _server_cpu(proc.pid)
        engine0 = _cpu_s(engine) if engine else 0.0
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - t0
        cpu1 = _server_cpu(proc.pid)
        engine_cpu = _cpu_s(engine) - engine0 if engine else 0.0
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
    return HttpRun(int(received), int(stored), elapsed, len(retries), cpu1[0] - cpu0[0], cpu1[1] - cpu0[1],
                   engine_cpu)  # fmt: skip


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=int, default=120, help="request bodies (default 120)")
    parser.add_argument("--spans-per-body", type=int, help="default 500, or 1000 with --heavy")
    parser.add_argument("--heavy", action="store_true", help="LLM spans with message contents (~1.3 KB a span)")
    parser.add_argument("--clients", default="4", help="concurrent client threads, e.g. 1,4 (default 4)")
    parser.add_argument("--workers", default="1,2", help="server ingest_workers values to measure (default 1,2)")
    parser.add_argument("--no-file", action="store_true", help="skip the `spanprism ingest` from a file rows")
    parser.add_argument("--clickhouse", action="store_true", help="also run the HTTP rows writing to ClickHouse (chDB)")
    parser.add_argument("--baseline", type=Path, help="a directory holding another checkout's `spanprism` package: "
                        "its server runs each HTTP row too, side by side")  # fmt: skip
    parser.add_argument(
        "--decoders",
        default="python,native" if otlp_proto.NATIVE else "python",
        help="OTLP protobuf decoders to run side by side (default python,native when built)",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    per_body = args.spans_per_body or (1000 if args.heavy else 500)
    payloads = bodies(args.bodies, per_body, args.seed, heavy=args.heavy)
    size = sum(map(len, payloads)) / len(payloads)
    print(f"{len(payloads)} bodies x {per_body} spans, {size / 1024:.0f} KiB each ({size / per_body:.0f} B a span, "
          f"protobuf); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    rows: list[tuple[str, int, int, float, int, str]] = []
    with tempfile.TemporaryDirectory(prefix="spanprism-api-bench-") as tmp:
        workdir = Path(tmp)
        names = args.decoders.split(",")
        python_pkg = python_only_package(workdir) if "python" in names and otlp_proto.NATIVE else None
        for name in names:
            with decoder(name):
                seen, calls, secs, cpu = run_inprocess(payloads, False, workdir)
            stages = f"decode {cpu['decode'] / seen * 1e6:.1f} + normalize {cpu['normalize'] / seen * 1e6:.1f}"
            rows.append((f"decode (in-process) {name}", seen, calls, secs, 0, stages))
        seen, calls, secs, cpu = run_inprocess(payloads, True, workdir)
        rows.append(("decode+store (in-process)", seen, calls, secs, 0, f"store {cpu['store'] / seen * 1e6:.1f}"))
        for workers in (int(w) for w in args.workers.split(",")):
            if not args.no_file:
                seen, calls, secs = run_file(payloads, workers, workdir)
                rows.append((f"file ingest_w{workers}", seen, calls, secs, 0, ""))
            for clients in (int(c) for c in args.clients.split(",")):
                engines = (False, True) if args.clickhouse else (False,)
                packages: list[tuple[str, Path | None]] = [(n, python_pkg if n == "python" else None) for n in names]
                if args.baseline:
                    packages.insert(0, ("baseline", args.baseline))
                for clickhouse, (label, package) in itertools.product(engines, packages):
                    run = run_http(payloads, workers, clients, workdir, package, clickhouse, label)
                    name = f"http_w{workers} ({clients} clients){' clickhouse' if clickhouse else ''} {label}"
                    cpu_text = (f"main {run.main_cpu / run.seen * 1e6:.1f} + workers "
                                f"{run.worker_cpu / run.seen * 1e6:.1f}")  # fmt: skip
                    if clickhouse:
                        cpu_text += f" + chDB {run.engine_cpu / run.seen * 1e6:.1f}"
                    rows.append((name, run.seen, run.calls, run.seconds, run.retries, cpu_text))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'run':<44}{'spans':>9}{'calls':>9}{'seconds':>9}{'spans/s':>9}{'vs decode':>10}{'503s':>6}"
          "  CPU µs/span")  # fmt: skip
    floor = rows[0][1] / rows[0][3]
    for name, seen, calls, secs, retries, cpu_text in rows:
        rate = seen / secs
        print(f"{name:<44}{seen:>9,}{calls:>9,}{secs:>9.2f}{rate:>9,.0f}{rate / floor:>10.0%}{retries:>6}  {cpu_text}")


if __name__ == "__main__":
    main()
