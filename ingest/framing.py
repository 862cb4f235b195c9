"""Framing: cut a byte stream into bounded chunks of whole records, holding only O(chunk) bytes.

:class:`Buffer` keeps the unconsumed bytes in front of the stream; the framers below never hold more
than about ``chunk_bytes`` (or one record of at most ``max_record_bytes``). A record over the limit is
skipped while reading, never buffered whole, and comes out as a :class:`RejectedChunk` that
``decode_chunk`` turns into one quarantined item. Format sniffing and decoding live in ``spanprism.ingest.decode``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from spanprism.ingest.records import RawChunk

__all__ = [
    "GZIP_MAGIC",
    "PREFIX_BYTES",
    "ZSTD_MAGIC",
    "Buffer",
    "Joined",
    "RejectedChunk",
    "iter_length_prefixed",
    "iter_lines",
    "iter_whole",
    "read_up_to",
]

GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
PREFIX_BYTES = 64 << 10  # how much of a refused record is kept as its quarantined ``raw``
_EMPTY_RECORD = bytes(4)  # the length prefix of an empty record
_EMPTY_RUN_MARK = 1024  # a run of empty records at least this long is reported (as an empty chunk) for the cap


def read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, or fewer only at end of stream (pipes return short reads)."""
    parts, have = [], 0
    while have < size:
        part = stream.read(size - have)
        if not part:
            break
        parts.append(part)
        have += len(part)
    return b"".join(parts)


class Joined(io.RawIOBase):
    """Replays bytes already read for sniffing, then reads on from ``tail``; closes the streams it owns."""

    def __init__(self, head: bytes, tail: BinaryIO, owned: list[BinaryIO]) -> None:
        super().__init__()
        self._head, self._tail, self._owned = memoryview(head), tail, owned

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            size = min(len(target), len(self._head))
            target[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._tail.read(len(target))
        target[: len(data)] = data
        return len(data)

    def close(self) -> None:
        for stream in self._owned:
            stream.close()
        super().close()


class Buffer:
    """Unconsumed bytes in front of a stream, with the stream offset of the first of them."""

    def __init__(self, head: bytes, stream: BinaryIO, block: int, start: int = 0) -> None:
        self.data, self.pos, self.offset = head, start, start
        self.stream, self.block, self.eof = stream, block, False

    def available(self) -> int:
        return len(self.data) - self.pos

    def fill(self, size: int) -> bool:
        """Make at least ``size`` bytes available unless the stream ends first; True if they are."""
        have = self.available()
        if have >= size or self.eof:
            return have >= size
        parts = [self.data[self.pos :]]
        while have < size:
            part = self.stream.read(max(size - have, self.block))
            if not part:
                self.eof = True
                break
            parts.append(part)
            have += len(part)
        self.data, self.pos = b"".join(parts), 0
        return have >= size

    def peek(self, size: int) -> bytes:
        return self.data[self.pos : self.pos + size]

    def take(self, size: int) -> bytes:
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        self.offset += len(out)
        return out

    def discard(self, size: int) -> int:
        """Drop ``size`` bytes without holding them in memory; returns how many there were."""
        dropped = 0
        while dropped < size and self.fill(1):
            dropped += len(self.take(min(size - dropped, self.available())))
        return dropped

    def discard_all(self) -> int:
        return self.discard(1 << 62)

    def find(self, byte: bytes, skip: int = 0) -> int:
        """Index (relative to ``pos``) of ``byte`` at or after ``skip`` in the buffered bytes, or -1."""
        index = self.data.find(byte, self.pos + skip)
        return index - self.pos if index >= 0 else -1


@dataclass(slots=True)
class RejectedChunk(RawChunk):
    """A record the framer refused (oversize, truncated, unrecognized): ``data`` is a bounded prefix of it.

    ``decode_chunk`` turns it into exactly one :class:`Quarantined` with ``reason`` and ``location``. Damage to a
    compressed stream and an input refused as a whole (``refused``) come out the same way.
    """

    reason: str = ""
    location: str = ""
    refused: bool = False  # the input as a whole was refused (over a size or record cap), not just this record


def iter_lines(buffer: Buffer, source: str, chunk_bytes: int, limit: int) -> Iterator[RawChunk]:
    """jsonl: chunks of whole lines of about ``chunk_bytes``; a line over ``limit`` is skipped, not buffered."""
    line = 1
    while buffer.fill(chunk_bytes) or buffer.available():
        if buffer.eof and buffer.available() <= chunk_bytes:
            cut = buffer.available()
        else:
            cut = buffer.data.rfind(b"\n", buffer.pos, buffer.pos + chunk_bytes) + 1 - buffer.pos
            if cut <= 0:  # the first line is longer than a chunk
                cut = _line_end(buffer, chunk_bytes, limit)
        if cut < 0:
            offset, prefix = buffer.offset, buffer.peek(PREFIX_BYTES)
            size = _skip_line(buffer)
            yield RejectedChunk(
                source,
                "jsonl",
                prefix,
                line,
                offset,
                location=f"line {line}",
                reason=f"line of {size} bytes exceeds max_record_bytes ({limit})",
            )
            line += 1
            continue
        offset = buffer.offset
        data = buffer.take(cut)
        yield RawChunk(source, "jsonl", data, line, offset)
        line += data.count(b"\n")


def _line_end(buffer: Buffer, searched: int, limit: int) -> int:
    """Length (newline included) of the first buffered line, reading on as needed; -1 if it exceeds ``limit``."""
    while True:
        index = buffer.find(b"\n", searched)
        if index >= 0:
            return index + 1 if index <= limit else -1
        searched = buffer.available()
        if searched > limit:
            return -1
        if not buffer.fill(searched + 1):
            return buffer.available() if buffer.available() <= limit else -1


def _skip_line(buffer: Buffer) -> int:
    """Consume the first line and its newline; returns its length without the newline."""
    size = 0
    while buffer.fill(1):
        index = buffer.find(b"\n")
        if index >= 0:
            buffer.take(index + 1)
            return size + index
        size += buffer.discard(buffer.available())
    return size


def iter_length_prefixed(buffer: Buffer, source: str, fmt: str, chunk_bytes: int, limit: int) -> Iterator[RawChunk]:
    """proto_lp(_zstd): chunks of whole records (prefixes kept); a refused record becomes its own RejectedChunk."""
    parts: list[bytes] = []
    size = first = start = number = 0
    while buffer.fill(4) or buffer.available():
        if buffer.peek(4) == _EMPTY_RECORD:
            if parts:
                yield RawChunk(source, fmt, b"".join(parts), first, start)
                parts, size = [], 0
            offset, skipped = buffer.offset, _skip_empty(buffer)
            number += skipped
            if skipped >= _EMPTY_RUN_MARK:  # an empty chunk that carries the record count to the per-input cap
                yield RawChunk(source, fmt, b"", number, offset)
            continue
        number += 1
        offset = buffer.offset
        record, prefix, reason = _next_record(buffer, limit)
        if record is not None:
            if not parts:
                first, start = number, offset
            parts.append(record)
            size += len(record)
            if size < chunk_bytes:
                continue
        if parts:
            yield RawChunk(source, fmt, b"".join(parts), first, start)
            parts, size = [], 0
        if record is None:
            yield RejectedChunk(source, fmt, prefix, number, offset, reason=reason, location=f"record {number}")
    if parts:
        yield RawChunk(source, fmt, b"".join(parts), first, start)


def _skip_empty(buffer: Buffer) -> int:
    """Consume a run of zero-length records (4 zero bytes each) at C speed; returns how many there were.

    They decode to nothing, and one at a time they are slow: 300 MiB of inflated zeros is 78 million of them.
    """
    count = 0
    while buffer.fill(4) and buffer.peek(4) == _EMPTY_RECORD:
        rest = buffer.data[buffer.pos :]
        run = (len(rest) - len(rest.lstrip(b"\0"))) // 4
        buffer.take(run * 4)
        count += run
    return count


def _next_record(buffer: Buffer, limit: int) -> tuple[bytes | None, bytes, str]:
    """(record with its prefix, b"", "") or (None, bounded raw prefix, reason) for a refused record."""
    if buffer.available() < 4:
        tail = buffer.take(buffer.available())
        return None, tail, f"truncated length prefix: {len(tail)} trailing bytes"
    length = int.from_bytes(buffer.peek(4), "big")
    if length > limit:
        buffer.fill(4 + min(length, PREFIX_BYTES))
        prefix = buffer.peek(4 + min(length, PREFIX_BYTES))[4:]
        present = buffer.discard(4 + length) - 4
        ends = "" if present == length else f"; the input ends after {present} of them"
        return None, prefix, f"record of {length} bytes exceeds max_record_bytes ({limit}){ends}"
    if not buffer.fill(4 + length):
        rest = buffer.take(buffer.available())
        return (
            None,
            rest[4 : 4 + PREFIX_BYTES],
            (f"truncated record: the length prefix announces {length} bytes, only {len(rest) - 4} remain"),
        )
    return buffer.take(4 + length), b"", ""


def iter_whole(buffer: Buffer, source: str, fmt: str, limit: int) -> Iterator[RawChunk]:
    """json/proto: the whole stream is one record; above ``limit`` it is refused, the rest read and dropped."""
    buffer.fill(limit + 1)
    if buffer.available() > limit:
        prefix = buffer.peek(PREFIX_BYTES)
        size = buffer.discard_all()
        yield RejectedChunk(
            source,
            fmt,
            prefix,
            reason=f"{fmt} document of {size} bytes exceeds max_record_bytes ({limit})",
            location="document" if fmt == "json" else "message",
        )
        return
    offset = buffer.offset
    yield RawChunk(source, fmt, buffer.take(buffer.available()), 1, offset)
