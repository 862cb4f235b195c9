"""Ingest with the fold (one row per LLM call, ingest/fold.py) on vs off, side by side: what merging costs.

Run:  .venv/bin/python benchmarks/ingest_fold.py --calls 60000 --reps 3 --out /tmp/spanprism-fold

It writes OTLP JSON-lines files of real captured calls (tests/fixtures/normalize: the Anthropic SDK's own span as
a child of OpenInference's, OpenLLMetry's and the SDK's spans in two traces sharing a response id, the same
OpenInference pair with a non-LLM framework span between them, and the SDK's span alone), each call cloned with
fresh ids, response ids and times, plus non-LLM spans (a root request span per trace and a DB span under it). Two
scenarios, each on the same files for both modes:

* ``together`` — one file holding every span: the spans of a call meet in one write batch;
* ``split`` — the instrumentations' spans in one file, the SDK's in a second, ingested one after the other: every
  multi-span call is merged with rows already stored (the loader reads them back);
* ``plain`` — the same number of calls, each one span (the SDK's alone) with the same non-LLM spans: what the
  fold costs when nothing is to be merged (its one candidate statement per batch).

Each (scenario, mode) is ingested into a fresh DuckDB file in its own child process, modes alternating, ``--reps``
times; ``off`` replaces the loader's fold step with one that keeps every span as its own row and stores no
non-LLM links. It prints spans/s per run, the median per mode and the ratio on/off, and writes
``DIR/ingest_fold.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from spanprism.attribution.simulator.otlp.encoding import resource_spans

ROOT = Path(__file__).resolve().parents[1]

FIXTURES = ROOT / "tests" / "fixtures" / "normalize"
SDK_SCOPE = "com.anthropic.sdk.python"
#: kind of call → share of the calls.
MIX = {"openinference_sdk": 0.35, "openllmetry_sdk": 0.25, "chain": 0.10, "sdk_alone": 0.30}
SPANS_PER_LINE = 50


def _templates() -> dict[str, list[list[dict[str, Any]]]]:
    """kind → the captured calls (non-streamed and streamed; each a list of spans) to clone."""

    def calls(name: str) -> list[list[dict[str, Any]]]:
        spans = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
        sdk = sorted((s for s in spans if s["scope"] == SDK_SCOPE), key=lambda s: s["start_ns"])[:2]
        others = sorted((s for s in spans if s["scope"] != SDK_SCOPE), key=lambda s: s["start_ns"])[:2]
        return [[o, s] for o, s in zip(others, sdk, strict=True)]

    oi = calls("anthropic_openinference")
    chain = []
    for outer, sdk in oi:
        middle = {**outer, "span_id": "c" * 16, "parent_span_id": outer["span_id"], "name": "retry step",
                  "kind": 1, "scope": "app.framework", "attributes": {"app.step": "retry"}, "events": [],
                  "start_ns": sdk["start_ns"] - 1000, "end_ns": sdk["end_ns"] + 1000}  # fmt: skip
        chain.append([outer, middle, {**sdk, "parent_span_id": middle["span_id"]}])
    return {"openinference_sdk": oi, "openllmetry_sdk": calls("anthropic_openllmetry"), "chain": chain,
            "sdk_alone": [[s] for s in orjson.loads((FIXTURES / "anthropic_sdk.json").read_bytes())
                          if s["status_code"] != 2][:2]}  # fmt: skip


def _clone(call: list[dict[str, Any]], rng: random.Random, start_ns: int, n: int) -> list[dict[str, Any]]:
    """The call's spans with fresh trace/span ids (parents mapped), response ids and times; a root request span
    and a DB span are added to each trace."""
    first = min(s["start_ns"] for s in call)
    traces = {t: f"{rng.getrandbits(128):032x}" for t in sorted({s["trace_id"] for s in call})}
    ids = {s["span_id"]: f"{rng.getrandbits(64):016x}" for s in call}
    out = []
    roots = {}
    for t, new_t in traces.items():
        members = [s for s in call if s["trace_id"] == t]
        lo, hi = min(s["start_ns"] for s in members), max(s["end_ns"] for s in members)
        root = {"trace_id": new_t, "span_id": f"{rng.getrandbits(64):016x}", "parent_span_id": None,
                "name": "POST /answer", "kind": 2, "start_ns": lo - first + start_ns - 2_000_000,
                "end_ns": hi - first + start_ns + 1_000_000, "attributes": {"http.route": "/answer"}, "events": [],
                "status_code": 0, "scope": "opentelemetry.instrumentation.fastapi",
                "resource": members[0]["resource"]}  # fmt: skip
        roots[t] = root
        db = {**root, "span_id": f"{rng.getrandbits(64):016x}", "parent_span_id": root["span_id"], "kind": 3,
              "name": "SELECT documents", "scope": "opentelemetry.instrumentation.psycopg",
              "start_ns": root["start_ns"] + 200_000, "end_ns": root["start_ns"] + 1_500_000,
              "attributes": {"db.system": "postgresql"}}  # fmt: skip
        out += [root, db]
    for s in call:
        shift = start_ns - first
        attrs = dict(s["attributes"])
        if "gen_ai.response.id" in attrs:
            attrs["gen_ai.response.id"] = f"msg_bench{n:012d}"
        parent = ids.get(s["parent_span_id"]) if s["parent_span_id"] else roots[s["trace_id"]]["span_id"]
        out.append({**s, "trace_id": traces[s["trace_id"]], "span_id": ids[s["span_id"]], "parent_span_id": parent,
                    "start_ns": s["start_ns"] + shift, "end_ns": s["end_ns"] + shift, "attributes": attrs,
                    "events": [{**e, "time_ns": e["time_ns"] + shift} for e in s["events"]]})  # fmt: skip
    return out


def _spans(calls: int, seed: int, mix: dict[str, float] = MIX) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    templates = _templates()
    kinds, weights = zip(*mix.items(), strict=True)
    clock = 1_796_000_000_000_000_000
    for n in range(calls):
        clock += int(rng.expovariate(1 / 50e6))  # ~20 calls a second
        kind = rng.choices(kinds, weights)[0]
        yield from _clone(rng.choice(templates[kind]), rng, clock, n)


def _write(path: Path, spans: Iterator[dict[str, Any]]) -> int:
    count = 0
    with path.open("wb") as fh:
        line: list[dict[str, Any]] = []
        for span in spans:
            line.append(resource_spans(span))
            count += 1
            if len(line) == SPANS_PER_LINE:
                fh.write(orjson.dumps({"resourceSpans": line}) + b"\n")
                line = []
        if line:
            fh.write(orjson.dumps({"resourceSpans": line}) + b"\n")
    return count


def generate(out: Path, calls: int, seed: int) -> dict[str, Any]:
    """``all.jsonl`` and its split: ``first.jsonl`` (everything but the SDK's spans), ``second.jsonl`` (those)."""
    out.mkdir(parents=True, exist_ok=True)
    spans = list(_spans(calls, seed))
    return {
        "calls": calls,
        "spans": _write(out / "all.jsonl", iter(spans)),
        "first": _write(out / "first.jsonl", (s for s in spans if s["scope"] != SDK_SCOPE)),
        "second": _write(out / "second.jsonl", (s for s in spans if s["scope"] == SDK_SCOPE)),
        "plain": _write(out / "plain.jsonl", _spans(calls, seed, {"sdk_alone": 1.0})),
    }


# --- child process -------------------------------------------------------------------------------------------


def _fold_off() -> None:
    """The loader without its fold step: every span its own row, no non-LLM links stored."""
    from spanprism.ingest import load
    from spanprism.ingest.fold import Folded

    def keep(cur: Any, tables: list[Any], batch_ids: list[str], links: Any = None) -> Folded:
        zeros = [0] * len(tables)
        return Folded(list(tables), list(zeros), list(zeros), list(zeros))

    load.fold_calls = keep  # type: ignore[assignment]
    load.concat_links = lambda tables: None  # type: ignore[assignment]


def child(mode: str, db: str, paths: list[str]) -> dict[str, Any]:
    from spanprism.api.storage.connect import open_db
    from spanprism.ingest.pipeline import ingest_paths

    if mode == "off":
        _fold_off()
    for leftover in (db, db + ".wal"):
        Path(leftover).unlink(missing_ok=True)
    con = open_db(db)  # migrations run before the clock starts
    started = time.perf_counter()
    summaries = [ingest_paths(con, [p]) for p in paths]
    seconds = time.perf_counter() - started
    rows = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    con.close()
    return {"seconds": seconds, "spans": sum(s.spans_seen for s in summaries), "rows": int(rows),
            "merged": sum(s.merged for s in summaries)}  # fmt: skip


def run_child(mode: str, db: Path, paths: list[Path]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, str(db), *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], argv[2], argv[3:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=60_000, help="LLM calls in the files (default 60,000)")
    parser.add_argument("--reps", type=int, default=3, help="runs per scenario and mode (default 3)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/spanprism-fold"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    files = generate(args.out, args.calls, args.seed)
    scenarios = {"together": [args.out / "all.jsonl"], "split": [args.out / "first.jsonl", args.out / "second.jsonl"],
                 "plain": [args.out / "plain.jsonl"]}  # fmt: skip
    load = os.getloadavg()
    print(f"{files['calls']} calls, {files['spans']} spans (split {files['first']} + {files['second']}); "
          f"load average {load[0]:.2f} at start")  # fmt: skip
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"on": [], "off": []} for s in scenarios}
    for rep in range(args.reps):
        for scenario, paths in scenarios.items():
            for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):  # alternate which goes first
                got = run_child(mode, args.out / f"{scenario}-{mode}.duckdb", paths)
                got["spans_per_s"] = got["spans"] / got["seconds"]
                runs[scenario][mode].append(got)
                print(f"rep {rep} {scenario:8} {mode:3} {got['seconds']:7.2f} s {got['spans_per_s']:9.0f} spans/s "
                      f"rows {got['rows']} merged {got['merged']}", flush=True)  # fmt: skip
    summary = {}
    for scenario, modes in runs.items():
        on = statistics.median(r["spans_per_s"] for r in modes["on"])
        off = statistics.median(r["spans_per_s"] for r in modes["off"])
        summary[scenario] = {"on_spans_per_s": on, "off_spans_per_s": off, "on_vs_off": on / off}
        print(f"{scenario:8} median on {on:9.0f} spans/s, off {off:9.0f} spans/s, on/off {on / off:.3f}")
    end_load = os.getloadavg()
    print(f"load average {end_load[0]:.2f} at end")
    result = {"files": files, "runs": runs, "summary": summary, "load": [load, end_load]}
    (args.out / "ingest_fold.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
