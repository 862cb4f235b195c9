"""A small seeded generator of canonical ``llm_calls`` rows with injected shifts, for detection tests and benchmarks.

Not the realistic simulator (:mod:`.simulate`): just enough physics to exercise detection honestly.
Traffic is Poisson with a diurnal cycle (quieter weekends); each call draws a prompt (log-normal, cache hits
for prompts ≥ 1,024 tokens), an output length, a TTFT that grows with the uncached prompt, an ITL, and rare
slow outliers (a heavy tail). Latency itself breathes with the daily load. Injected :class:`Shift` windows
multiply TTFT, ITL or both (e2e) of one series; :class:`Surge` windows multiply its traffic only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanprism.models.schema import conform

START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday


@dataclass(frozen=True)
class SeriesSpec:
    """One series: identity, traffic (mean calls/s) and latency scale."""

    service: str = "chatbot"
    provider: str = "openai"
    model: str = "gpt-4o"
    operation: str = "chat"
    rate: float = 0.2
    streaming: float = 1.0  # share of streaming calls
    ttft_ms: float = 450.0
    itl_ms: float = 22.0
    input_median: float = 1800.0
    output_median: float = 220.0
    diurnal: float = 0.6  # traffic amplitude
    latency_diurnal: float = 0.06  # log-amplitude of the latency cycle


@dataclass(frozen=True)
class Shift:
    """Multiply ``family`` latency of series ``series`` by ``factor`` in [start, start + duration)."""

    series: int
    start: datetime
    duration_s: int
    factor: float
    family: str = "e2e"  # e2e (TTFT and ITL), ttft, itl


@dataclass(frozen=True)
class Surge:
    """Multiply the traffic of series ``series`` by ``factor`` in [start, start + duration) (latency unchanged)."""

    series: int
    start: datetime
    duration_s: int
    factor: float


def _cycle(t_s: np.ndarray) -> np.ndarray:
    hours = (t_s % 86400) / 3600.0
    return np.sin(2 * np.pi * (hours - 9.0) / 24.0)


def _arrivals(rng: np.random.Generator, spec: SeriesSpec, idx: int, start_s: int, days: int,
              surges: tuple[Surge, ...]) -> np.ndarray:  # fmt: skip
    minutes = start_s + 60 * np.arange(days * 1440, dtype=np.int64)
    weekend = ((minutes // 86400 + 3) % 7) >= 5
    lam = spec.rate * 60 * (1 + spec.diurnal * _cycle(minutes)) * np.where(weekend, 0.75, 1.0)
    for s in surges:
        if s.series == idx:
            lo = int(s.start.timestamp())
            lam = np.where((minutes >= lo) & (minutes < lo + s.duration_s), lam * s.factor, lam)
    n = rng.poisson(np.maximum(lam, 0))
    return np.repeat(minutes, n) + rng.uniform(0, 60, n.sum())


def _series_calls(rng: np.random.Generator, spec: SeriesSpec, idx: int, start_s: int, days: int,
                  shifts: tuple[Shift, ...], surges: tuple[Surge, ...]) -> dict[str, np.ndarray]:  # fmt: skip
    t = np.sort(_arrivals(rng, spec, idx, start_s, days, surges))
    n = len(t)
    inp = np.maximum(16, rng.lognormal(np.log(spec.input_median), 0.5, n)).astype(np.int64)
    hit = (inp >= 1024) & (rng.random(n) < 0.7)
    cache = np.where(hit, (inp * rng.uniform(0.4, 0.9, n)) // 128 * 128, 0).astype(np.int64)
    out = np.maximum(1, rng.lognormal(np.log(spec.output_median), 0.6, n)).astype(np.int64)
    load = np.exp(spec.latency_diurnal * _cycle(t.astype(np.int64)))
    uncached_ref = spec.input_median * 0.6
    tail = np.where(rng.random(n) < 0.015, rng.lognormal(np.log(3.0), 0.5, n), 1.0)
    ttft = spec.ttft_ms * (0.5 + 0.5 * (inp - cache) / uncached_ref) * rng.lognormal(0, 0.25, n) * load * tail
    itl = spec.itl_ms * rng.lognormal(0, 0.12, n) * load
    for s in shifts:
        if s.series != idx:
            continue
        lo = s.start.timestamp()
        win = (t >= lo) & (t < lo + s.duration_s)
        if s.family in ("e2e", "ttft"):
            ttft = np.where(win, ttft * s.factor, ttft)
        if s.family in ("e2e", "itl"):
            itl = np.where(win, itl * s.factor, itl)
    decode = itl * (out - 1)
    duration = ttft + decode
    error = rng.random(n) < 0.005
    duration = np.where(error, rng.uniform(50, 500, n), duration)
    streaming = rng.random(n) < spec.streaming
    return {"t": t, "inp": inp, "cache": cache, "out": out, "ttft": ttft, "itl": itl, "decode": decode,
            "duration": duration, "error": error, "streaming": streaming,
            "region": np.where(rng.random(n) < 0.8, "eastus", "westus")}  # fmt: skip


def _hex_ids(prefix: str, n: int, width: int) -> pa.Array:
    # Decimal digits are hex digits too: zero-padded counters in Arrow, no Python loop over calls.
    counter = pc.utf8_lpad(pa.array(np.arange(n)).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(pa.scalar(prefix), counter, "")


def generate_calls(specs: list[SeriesSpec], *, days: int, start: datetime = START, shifts: tuple[Shift, ...] = (),
                   surges: tuple[Surge, ...] = (), seed: int = 0) -> pa.Table:  # fmt: skip
    """Calls of every series as one ``llm_calls`` Arrow table (ingest batch = one per series and day)."""
    rng = np.random.default_rng(seed)
    start_s = int(start.timestamp())
    parts = []
    for idx, spec in enumerate(specs):
        c = _series_calls(rng, spec, idx, start_s, days, shifts, surges)
        n = len(c["t"])
        stream = c["streaming"] & ~c["error"]
        day = ((c["t"] - start_s) // 86400).astype(np.int64)
        parts.append(pa.table({
            "trace_id": _hex_ids(f"{seed:08x}{idx:08x}", n, 16),
            "span_id": _hex_ids(f"{idx:04x}", n, 12),
            "service": [spec.service] * n, "operation": [spec.operation] * n, "provider": [spec.provider] * n,
            "request_model": [spec.model] * n, "response_model": [f"{spec.model}-2024-08-06"] * n,
            "system_fingerprint": ["fp_a1"] * n, "region": c["region"],
            "server_address": np.char.add(c["region"], ".api.example.com"),
            "start_time": pa.array((c["t"] * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC")),
            "duration_ms": c["duration"], "ttft_ms": pa.array(np.where(stream, c["ttft"], np.nan), from_pandas=True),
            "decode_ms": pa.array(np.where(stream, c["decode"], np.nan), from_pandas=True),
            "itl_ms": pa.array(np.where(stream, c["itl"], np.nan), from_pandas=True),
            "streaming": c["streaming"], "status": np.where(c["error"], "error", "ok"),
            "input_tokens": c["inp"], "cache_read_tokens": c["cache"], "uncached_input_tokens": c["inp"] - c["cache"],
            "output_tokens": c["out"], "source_convention": ["otel_semconv"] * n,
            "ingest_batch": pc.binary_join_element_wise(f"synth-{seed}-{idx}", pa.array(day).cast(pa.string()), "-"),
        }))  # fmt: skip
    return conform(pa.concat_tables(parts))


def insert_calls(con: duckdb.DuckDBPyConnection, calls: pa.Table) -> None:
    """Append calls to ``llm_calls`` (the test stand-in for the ingest loader)."""
    con.register("_synth_calls", calls)
    try:
        con.execute("INSERT INTO llm_calls SELECT * FROM _synth_calls")
    finally:
        con.unregister("_synth_calls")


def at(days: float = 0.0, hours: float = 0.0, start: datetime = START) -> datetime:
    """A time relative to the generator's default start."""
    return start + timedelta(days=days, hours=hours)
