"""Real workload material bundled with the simulator: Mooncake prompts/arrivals and LLMPerf latency noise.

Everything here is read from ``attribution/data`` (see ``data/SOURCE.md``), parsed once and cached. The simulator
never invents a length, a prefix-sharing pattern, an arrival burst or a latency tail: it rescales these.

- :func:`prompt_trace` — Mooncake requests as flat numpy arrays: user-part length, output length, prefix-block ids
  (512 tokens per block; equal ids = identical prefix) and their *runs* (see :class:`PromptTrace`).
- :func:`burst_profile` — per-minute rate multipliers from the Mooncake conversation trace.
- :func:`gap_shape` — inter-arrival gaps of the Mooncake synthetic trace, normalised to mean 1.
- :func:`noise_pool` — joint (TTFT, ITL) multiplicative noise from one LLMPerf provider, normalised to median 1.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
#: Mooncake hashes prompts in 512-token blocks (README of FAST25-release/traces).
BLOCK_TOKENS = 512
TRACE_FILES = {
    "conversation": "mooncake_conversation_trace.jsonl.gz",
    "synthetic": "mooncake_synthetic_trace.jsonl.gz",
}
#: LLMPerf files whose providers had cold starts (replicate: TTFT p50 1.2-5.6 s) or < 15% successful requests
#: (lepton: 20 of 150) are not representative of a warm hosted endpoint and are left out of the noise pools.
NOISE_PROVIDERS = ("anyscale", "bedrock", "fireworks", "groq", "perplexity", "together")


@dataclass(frozen=True)
class PromptTrace:
    """Mooncake requests as arrays; the trace's own shared system block is stripped (we prepend our own).

    ``run_*`` describe each request's *shareable* prefix (the leading blocks that occur in at least two requests)
    cut into runs of blocks with the same occurrence count. Block ``k+1`` of a prefix implies block ``k``, so equal
    counts mean the very same set of requests holds both blocks: a prefix cache sees a run as one unit. The first
    unshared block ends the shareable prefix, since nothing after it can ever be found in a cache.
    """

    name: str
    timestamp_ms: np.ndarray  # int64, ms since trace start
    user_tokens: np.ndarray  # int64, input tokens after the stripped shared block
    output_tokens: np.ndarray  # int64
    n_blocks: np.ndarray  # int64, user blocks per request
    run_offsets: np.ndarray  # int64 (n + 1), request i owns runs run_offsets[i]:run_offsets[i+1]
    run_end: np.ndarray  # int64, position (within the user blocks) of the run's last block
    run_id: np.ndarray  # int64, block id at ``run_end`` (identifies the whole prefix up to there)

    @property
    def size(self) -> int:
        """Number of requests."""
        return int(self.user_tokens.size)


def _read_jsonl_gz(name: str) -> list[dict]:
    with gzip.open(DATA_DIR / name, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _shared_runs(ids_flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each request's leading shared blocks into equal-occurrence runs (see :class:`PromptTrace`)."""
    _, inverse, counts = np.unique(ids_flat, return_inverse=True, return_counts=True)
    occ = counts[inverse]
    n = offsets.size - 1
    req = np.repeat(np.arange(n), np.diff(offsets))
    pos = np.arange(ids_flat.size) - offsets[req]
    unshared = occ < 2
    # Blocks after the first unshared block of a request are not shareable: zero them out with a per-request cumsum.
    cum = np.cumsum(unshared) - np.concatenate(([0], np.cumsum(unshared)))[offsets[req]]
    keep = (cum == 0) & ~unshared
    is_last_of_req = np.ones(ids_flat.size, dtype=bool)
    is_last_of_req[:-1] = req[1:] != req[:-1]
    nxt_occ = np.empty_like(occ)
    nxt_occ[:-1] = occ[1:]
    nxt_keep = np.zeros(ids_flat.size, dtype=bool)
    nxt_keep[:-1] = keep[1:] & ~is_last_of_req[:-1]
    run_end_mask = keep & (~nxt_keep | (nxt_occ != occ))
    run_req = req[run_end_mask]
    run_offsets = np.searchsorted(run_req, np.arange(n + 1))
    return run_offsets.astype(np.int64), pos[run_end_mask].astype(np.int64), ids_flat[run_end_mask]


@lru_cache(maxsize=4)
def prompt_trace(name: str) -> PromptTrace:
    """Load one Mooncake trace (``conversation`` or ``synthetic``) as a :class:`PromptTrace`."""
    rows = _read_jsonl_gz(TRACE_FILES[name])
    firsts = np.array([r["hash_ids"][0] for r in rows])
    common, common_n = np.unique(firsts, return_counts=True)
    # A first block shared by most requests is the trace's own system prompt (conversation: block 0 in 100%).
    system_block = int(common[np.argmax(common_n)]) if common_n.max() > 0.5 * len(rows) else None
    lists, user = [], []
    for r in rows:
        ids, tokens = r["hash_ids"], int(r["input_length"])
        if system_block is not None and ids and ids[0] == system_block:
            ids, tokens = ids[1:], tokens - BLOCK_TOKENS
        lists.append(ids)
        user.append(max(tokens, 16))
    n_blocks = np.array([len(ids) for ids in lists], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(n_blocks))).astype(np.int64)
    flat = np.fromiter((h for ids in lists for h in ids), dtype=np.int64, count=int(offsets[-1]))
    run_offsets, run_end, run_id = _shared_runs(flat, offsets)
    return PromptTrace(
        name=name,
        timestamp_ms=np.array([r["timestamp"] for r in rows], dtype=np.int64),
        user_tokens=np.array(user, dtype=np.int64),
        output_tokens=np.maximum(np.array([r["output_length"] for r in rows], dtype=np.int64), 1),
        n_blocks=n_blocks,
        run_offsets=run_offsets,
        run_end=run_end,
        run_id=run_id,
    )


@lru_cache(maxsize=1)
def burst_profile() -> np.ndarray:
    """Per-minute rate multipliers (mean 1) from the Mooncake conversation trace's arrival counts.

    Per-minute counts there have CV 0.118 where a Poisson process of the same rate gives 0.070; the simulator
    draws Poisson-like arrivals on top, so the deviations are shrunk by sqrt(1 - (0.070/0.118)^2) ≈ 0.8 to keep
    only the excess (real) burstiness.
    """
    ts = prompt_trace("conversation").timestamp_ms
    counts = np.bincount(ts // 60_000).astype(np.float64)
    counts = counts[:-1] if counts.size > 1 else counts  # the last minute is partial
    mean = counts.mean()
    poisson_cv = 1.0 / np.sqrt(mean)
    cv = counts.std() / mean
    shrink = np.sqrt(max(0.0, 1.0 - (poisson_cv / cv) ** 2)) if cv > poisson_cv else 0.0
    return 1.0 + (counts / mean - 1.0) * shrink


@lru_cache(maxsize=1)
def gap_shape() -> np.ndarray:
    """Inter-arrival gaps of the Mooncake synthetic trace (ms resolution, CV 1.01), normalised to mean 1."""
    ts = np.sort(prompt_trace("synthetic").timestamp_ms).astype(np.float64)
    gaps = np.diff(ts)
    gaps = gaps[gaps > 0]
    return gaps / gaps.mean()


@dataclass(frozen=True)
class LLMPerfRequest:
    """Successful LLMPerf requests: provider, model and latencies in seconds."""

    provider: np.ndarray
    model: np.ndarray
    ttft_s: np.ndarray
    itl_s: np.ndarray
    e2e_s: np.ndarray


@lru_cache(maxsize=1)
def llmperf_requests() -> LLMPerfRequest:
    """All successful requests of the bundled LLMPerf slice (``error_code`` empty)."""
    with gzip.open(DATA_DIR / "llmperf_requests.csv.gz", "rb") as fh:
        text = fh.read().decode("utf-8")
    ok = [r for r in csv.DictReader(io.StringIO(text)) if not r["error_code"]]
    return LLMPerfRequest(
        provider=np.array([r["provider"] for r in ok]),
        model=np.array([r["model"] for r in ok]),
        ttft_s=np.array([float(r["ttft_s"]) for r in ok]),
        itl_s=np.array([float(r["inter_token_latency_s"]) for r in ok]),
        e2e_s=np.array([float(r["end_to_end_latency_s"]) for r in ok]),
    )


@dataclass(frozen=True)
class NoisePool:
    """Joint (TTFT, ITL) multipliers of one LLMPerf provider; each model's samples divided by that model's median."""

    source: str
    ttft: np.ndarray
    itl: np.ndarray

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Resample ``n`` joint pairs (keeps the real TTFT/ITL correlation of a request)."""
        idx = rng.integers(0, self.ttft.size, size=n)
        return self.ttft[idx], self.itl[idx]


@lru_cache(maxsize=8)
def noise_pool(source: str) -> NoisePool:
    """The multiplicative noise pool of LLMPerf provider ``source`` (one of :data:`NOISE_PROVIDERS`)."""
    if source not in NOISE_PROVIDERS:
        raise ValueError(f"unknown LLMPerf noise source {source!r}")
    req = llmperf_requests()
    ttft, itl = [], []
    for model in sorted(set(req.model[req.provider == source].tolist())):
        sel = (req.provider == source) & (req.model == model)
        ttft.append(req.ttft_s[sel] / np.median(req.ttft_s[sel]))
        itl.append(req.itl_s[sel] / np.median(req.itl_s[sel]))
    return NoisePool(source=source, ttft=np.concatenate(ttft), itl=np.concatenate(itl))
