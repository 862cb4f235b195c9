"""Ingest orchestration: inputs → bounded chunks → (decode + normalize, optionally in worker processes) → load.

Decoding and normalizing are pure and CPU-bound, so they run in a process pool when there is enough input
to pay for it; the calling process stays the single DuckDB writer. At most ``2 × workers`` chunks are in
flight, so memory is bounded by the chunk size, not the file size.
"""

from __future__ import annotations

import gc
import glob
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import duckdb

from spanprism.ingest.decode import RejectedChunk, decode_chunk, iter_chunks, open_input
from spanprism.ingest.limits import Limits
from spanprism.ingest.load import BatchCounts, store_batch
from spanprism.ingest.normalize import normalize
from spanprism.ingest.records import Batch, DecodeResult, RawChunk, merge_batches
from spanprism.ingest.workers import worker_pool

#: Inputs smaller than this are processed in-process: spawning workers costs more than it saves.
PARALLEL_MIN_BYTES = 16 << 20

ProgressFn = Callable[[int], None]
StoreFn = Callable[[Batch], BatchCounts]


@dataclass(slots=True)
class IngestSummary:
    """Totals over everything one ingest call stored."""

    spans_seen: int = 0
    calls_stored: int = 0
    duplicates: int = 0
    non_llm_skipped: int = 0
    quarantined: int = 0
    merged: int = 0  # spans folded into another span's call: one row per call
    conventions: Counter[str] = field(default_factory=Counter)
    batches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # inputs that could not be opened at all

    def add(self, counts: BatchCounts) -> None:
        self.spans_seen += counts.spans_seen
        self.calls_stored += counts.calls_stored
        self.duplicates += counts.duplicates
        self.non_llm_skipped += counts.non_llm_skipped
        self.quarantined += counts.quarantined
        self.merged += counts.merged
        self.conventions.update(counts.conventions)
        self.batches.append(counts.batch_id)

    def as_dict(self) -> dict[str, object]:
        return {
            "spans_seen": self.spans_seen,
            "calls_stored": self.calls_stored,
            "duplicates": self.duplicates,
            "non_llm_skipped": self.non_llm_skipped,
            "quarantined": self.quarantined,
            "merged": self.merged,
            "conventions": dict(sorted(self.conventions.items())),
            "batches": len(self.batches),
            "errors": list(self.errors),
        }


def process_decoded(decoded: DecodeResult, source: str, size: int, tenant_attribute: str | None,
                    limits: Limits | None = None) -> Batch:  # fmt: skip
    """Normalize decoded spans and merge both stages' quarantine lists."""
    norm = normalize(decoded.spans, tenant_attribute=tenant_attribute, limits=limits)
    return Batch(
        source=source,
        calls=norm.table,
        quarantined=decoded.quarantined + norm.quarantined,
        spans_seen=len(decoded.spans) + len(decoded.quarantined),
        non_llm_skipped=norm.non_llm_skipped,
        conventions=dict(norm.conventions),
        size=size,
        links=norm.links,
    )


def process_chunk(chunk: RawChunk, tenant_attribute: str | None = None, limits: Limits | None = None) -> Batch:
    """Decode and normalize one chunk. Pure; runs in worker processes."""
    # The cyclic GC would rescan the many short-lived dicts of a chunk again and again; nothing here forms cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return process_decoded(decode_chunk(chunk), chunk.source, len(chunk.data), tenant_attribute, limits)
    finally:
        if was_enabled:
            gc.enable()


class _BatchWriter:
    """Groups consecutive chunk batches of one source into write batches of about ``batch_rows`` rows.

    DuckDB appends ~2x faster per row in large transactions than in small ones, and the primary-key
    check is cheaper too; a batch still lands whole or not at all.
    """

    def __init__(self, store: StoreFn, summary: IngestSummary, progress: ProgressFn | None,
                 batch_rows: int) -> None:  # fmt: skip
        self.store, self.summary, self.progress, self.batch_rows = store, summary, progress, batch_rows
        self.held: list[Batch] = []
        self.rows = 0

    def add(self, out: Batch) -> None:
        if self.held and self.held[0].source != out.source:
            self.flush()
        self.held.append(out)
        self.rows += out.calls.num_rows + len(out.quarantined)
        if self.progress:
            self.progress(out.size)
        if self.rows >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.held:
            return
        merged = merge_batches(self.held)
        self.held, self.rows = [], 0
        self.summary.add(self.store(merged))


def _store(con: duckdb.DuckDBPyConnection, batch: Batch) -> BatchCounts:
    return store_batch(con, batch)


def expand_sources(sources: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[str]]:
    """Files, folders (recursively, hidden files skipped), globs and ``-`` (stdin) → (inputs, errors)."""
    found: list[str] = []
    errors: list[str] = []
    for item in map(str, sources):
        if item == "-":
            found.append(item)
        elif os.path.isdir(item):
            found.extend(
                str(p)
                for p in sorted(Path(item).rglob("*"))
                if p.is_file() and not any(s.startswith(".") for s in p.parts)
            )
        elif os.path.isfile(item):
            found.append(item)
        elif glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            found.extend(matches) if matches else errors.append(f"{item}: no file matches this pattern")
        else:
            errors.append(f"{item}: no such file or directory")
    return found, errors


def _chunks(inputs: Iterable[str], chunk_bytes: int, errors: list[str], limits: Limits) -> Iterator[RawChunk]:
    for item in inputs:
        try:
            stream: BinaryIO = open_input(sys.stdin.buffer if item == "-" else item, limits.max_decompressed_bytes)
        except OSError as exc:
            errors.append(f"{item}: {exc.strerror or exc}")
            continue
        with stream:  # iter_chunks never raises: damage and refusals come out as RejectedChunks, then the next input
            for chunk in iter_chunks(stream, "stdin" if item == "-" else item, chunk_bytes=chunk_bytes,
                                     max_records=limits.max_records,
                                     max_decompressed_bytes=limits.max_decompressed_bytes):  # fmt: skip
                if isinstance(chunk, RejectedChunk) and chunk.refused:
                    errors.append(f"{item}: {chunk.reason}")
                yield chunk


def _input_bytes(inputs: Sequence[str]) -> int:
    return sum(os.path.getsize(p) for p in inputs if p != "-")


def ingest_paths(
    con: duckdb.DuckDBPyConnection,
    sources: Sequence[str | os.PathLike[str]],
    *,
    workers: int = 1,
    tenant_attribute: str | None = None,
    chunk_bytes: int = 4 << 20,
    batch_rows: int = 100_000,
    progress: ProgressFn | None = None,
    limits: Limits | None = None,
    store: StoreFn | None = None,
) -> IngestSummary:
    """Ingest files, folders, globs or ``-`` into ``con``.

    Chunks of one source are written in atomic batches of about ``batch_rows`` rows; a crash leaves whole
    batches only, and re-running the same ingest completes it without duplicates. ``store`` replaces the
    default writer (``con`` is then unused): the server passes one that takes its write lock per batch.
    """
    inputs, errors = expand_sources(sources)
    summary = IngestSummary(errors=errors)
    limits = limits or Limits()
    chunks = _chunks(inputs, chunk_bytes, summary.errors, limits)
    writer = _BatchWriter(store or (lambda out: _store(con, out)), summary, progress, batch_rows)
    if workers <= 1 or ("-" not in inputs and _input_bytes(inputs) < PARALLEL_MIN_BYTES):
        for chunk in chunks:
            writer.add(process_chunk(chunk, tenant_attribute, limits))
        writer.flush()
        return summary
    with worker_pool(workers) as pool:  # workers die with this process, even on SIGKILL
        pending: deque[Future[Batch]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(process_chunk, chunk, tenant_attribute, limits))
            # Store in submission order so batches (and line numbers) stay chronological.
            while len(pending) > 2 * workers or (pending and pending[0].done()):
                writer.add(pending.popleft().result())
        while pending:
            writer.add(pending.popleft().result())
    writer.flush()
    return summary
