"""Ingest orchestration: inputs → bounded chunks → (decode + normalize, optionally in worker processes) → load.

Decoding and normalizing are pure and CPU-bound, so they run in a process pool when there is enough input
to pay for it; the calling process stays the single DuckDB writer. At most ``2 × workers`` chunks are in
flight, so memory is bounded by the chunk size, not the file size.
"""

from __future__ import annotations

import glob
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import BinaryIO

import duckdb
import pyarrow as pa

from ingest.decode import decode_bytes, decode_chunk, iter_chunks, open_input
from ingest.load import BatchCounts, store_batch
from ingest.normalize import normalize
from ingest.records import DecodeResult, Quarantined, RawChunk

#: Inputs smaller than this are processed in-process: spawning workers costs more than it saves.
PARALLEL_MIN_BYTES = 16 << 20

ProgressFn = Callable[[int], None]


@dataclass(slots=True)
class ChunkOutput:
    """Decode + normalize result of one chunk, ready for the loader (picklable)."""

    source: str
    calls: pa.Table
    quarantined: list[Quarantined]
    spans_seen: int
    non_llm_skipped: int
    conventions: dict[str, int]
    size: int


@dataclass(slots=True)
class IngestSummary:
    """Totals over everything one ingest call stored."""

    spans_seen: int = 0
    calls_stored: int = 0
    duplicates: int = 0
    non_llm_skipped: int = 0
    quarantined: int = 0
    conventions: Counter[str] = field(default_factory=Counter)
    batches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # inputs that could not be opened at all

    def add(self, counts: BatchCounts) -> None:
        self.spans_seen += counts.spans_seen
        self.calls_stored += counts.calls_stored
        self.duplicates += counts.duplicates
        self.non_llm_skipped += counts.non_llm_skipped
        self.quarantined += counts.quarantined
        self.conventions.update(counts.conventions)
        self.batches.append(counts.batch_id)

    def as_dict(self) -> dict[str, object]:
        return {
            "spans_seen": self.spans_seen,
            "calls_stored": self.calls_stored,
            "duplicates": self.duplicates,
            "non_llm_skipped": self.non_llm_skipped,
            "quarantined": self.quarantined,
            "conventions": dict(sorted(self.conventions.items())),
            "batches": len(self.batches),
            "errors": list(self.errors),
        }


def process_decoded(decoded: DecodeResult, source: str, size: int, tenant_attribute: str | None) -> ChunkOutput:
    """Normalize decoded spans and merge both stages' quarantine lists."""
    norm = normalize(decoded.spans, tenant_attribute=tenant_attribute)
    return ChunkOutput(
        source=source,
        calls=norm.table,
        quarantined=decoded.quarantined + norm.quarantined,
        spans_seen=len(decoded.spans) + len(decoded.quarantined),
        non_llm_skipped=norm.non_llm_skipped,
        conventions=dict(norm.conventions),
        size=size,
    )


def process_chunk(chunk: RawChunk, tenant_attribute: str | None = None) -> ChunkOutput:
    """Decode and normalize one chunk. Pure; runs in worker processes."""
    return process_decoded(decode_chunk(chunk), chunk.source, len(chunk.data), tenant_attribute)


def _store(con: duckdb.DuckDBPyConnection, out: ChunkOutput) -> BatchCounts:
    return store_batch(
        con,
        source=out.source,
        calls=out.calls,
        quarantined=out.quarantined,
        spans_seen=out.spans_seen,
        non_llm_skipped=out.non_llm_skipped,
        conventions=out.conventions,
    )


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


def _chunks(inputs: Iterable[str], chunk_bytes: int, errors: list[str]) -> Iterator[RawChunk]:
    for item in inputs:
        try:
            stream: BinaryIO = open_input(sys.stdin.buffer if item == "-" else item)
        except OSError as exc:
            errors.append(f"{item}: {exc.strerror or exc}")
            continue
        with stream:
            yield from iter_chunks(stream, "stdin" if item == "-" else item, chunk_bytes=chunk_bytes)


def _input_bytes(inputs: Sequence[str]) -> int:
    return sum(os.path.getsize(p) for p in inputs if p != "-")


def ingest_paths(
    con: duckdb.DuckDBPyConnection,
    sources: Sequence[str | os.PathLike[str]],
    *,
    workers: int = 1,
    tenant_attribute: str | None = None,
    chunk_bytes: int = 4 << 20,
    progress: ProgressFn | None = None,
) -> IngestSummary:
    """Ingest files, folders, globs or ``-`` into ``con``; each chunk is one atomic batch."""
    inputs, errors = expand_sources(sources)
    summary = IngestSummary(errors=errors)
    chunks = _chunks(inputs, chunk_bytes, summary.errors)
    if workers <= 1 or ("-" not in inputs and _input_bytes(inputs) < PARALLEL_MIN_BYTES):
        for chunk in chunks:
            out = process_chunk(chunk, tenant_attribute)
            summary.add(_store(con, out))
            if progress:
                progress(out.size)
        return summary
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: list[Future[ChunkOutput]] = []
        for chunk in chunks:
            pending.append(pool.submit(process_chunk, chunk, tenant_attribute))
            while len(pending) > 2 * workers or (pending and pending[0].done()):
                _drain_one(con, pending, summary, progress)
        while pending:
            _drain_one(con, pending, summary, progress)
    return summary


def _drain_one(
    con: duckdb.DuckDBPyConnection,
    pending: list[Future[ChunkOutput]],
    summary: IngestSummary,
    progress: ProgressFn | None,
) -> None:
    # Store in submission order so batches (and line numbers) stay chronological.
    out = pending.pop(0).result()
    summary.add(_store(con, out))
    if progress:
        progress(out.size)


def ingest_body(
    con: duckdb.DuckDBPyConnection,
    body: bytes,
    *,
    source: str,
    content_type: str,
    content_encoding: str | None = None,
    tenant_attribute: str | None = None,
) -> BatchCounts:
    """Ingest one OTLP/HTTP request body as one batch. Raises ``ingest.decode.DecodeError`` if undecodable."""
    decoded = decode_bytes(body, source, content_type, content_encoding)
    return _store(con, process_decoded(decoded, source, len(body), tenant_attribute))
