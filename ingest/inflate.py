"""Streaming gzip/zstd decompression that checks the stream ended properly and bounds what it inflates.

``gzip.GzipFile`` and zstandard's ``stream_reader`` either raise mid-read (EOFError, BadGzipFile, zlib.error) or,
for zstd, return end-of-file on a frame cut short, so a damaged export was a traceback or a silent success.
:class:`Inflater` drives ``zlib``/``zstandard`` decompression objects itself and, on damage, *ends the stream*
there: everything decodable before the damage is returned, and :attr:`Inflater.damage` names the byte offset
(in the compressed input) and the reason, for the framer to quarantine as one record. Output past ``limit``
bytes raises :class:`InputTooLarge` while inflating (a decompression bomb stops at the limit).

Checked: a gzip member's CRC and length trailer (zlib does it), a member or frame cut short, bytes after a member
that start no new member (zero padding is allowed, as gzip(1) allows it), a zstd frame cut short or corrupt.
"""

from __future__ import annotations

import io
import zlib
from typing import Any, BinaryIO

import zstandard

from spanprism.ingest.framing import GZIP_MAGIC, ZSTD_MAGIC
from spanprism.ingest.otlp_json_values import DecodeError

__all__ = ["BodyTooLarge", "Inflater", "InputTooLarge", "check_inflated_size", "inflate_bytes"]

#: Compressed bytes fed per call. zstd has no output bound per call, and a run-length block turns 4 bytes into
#: 128 KiB: 2 KiB in gives at most ~64 MiB out, so the limit is checked at that granularity at worst.
_PIECE = {"gzip": 16 << 10, "zstd": 2 << 10}
#: On a zlib error the failed piece is replayed (from a copy of the decompressor) in steps this small, to keep
#: the output before the damage and to name its offset closely.
_SALVAGE_STEP = 256
#: Largest output returned per zlib call (zlib bounds its output itself).
_OUT = 1 << 20


class BodyTooLarge(DecodeError):
    """The (decompressed) body is larger than the receiver accepts (HTTP 413)."""


class InputTooLarge(BodyTooLarge):
    """An input inflates past the decompressed-size cap, or holds more records than the per-input cap."""


class Inflater(io.RawIOBase):
    """Decompress ``raw`` (``kind`` is ``gzip`` or ``zstd``) as a readable stream; see the module docstring."""

    def __init__(self, raw: BinaryIO, kind: str, limit: int | None = None) -> None:
        super().__init__()
        self._raw, self._kind, self._limit = raw, kind, limit
        self._obj = self._new()
        self._input = b""  # compressed bytes read but not yet fed
        self._out = b""  # inflated bytes not yet returned
        self._ended = False  # no more output: input exhausted or damage found
        self.consumed = 0  # compressed bytes fed to a decompressor (the offset damage is reported at)
        self.produced = 0
        self.damage: str | None = None

    def _new(self) -> Any:
        return zlib.decompressobj(wbits=31) if self._kind == "gzip" else zstandard.ZstdDecompressor().decompressobj()

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._out and not self._ended:
            self._step()
        size = min(len(target), len(self._out))
        target[:size] = self._out[:size]
        self._out = self._out[size:]
        return size

    def close(self) -> None:
        self._raw.close()
        super().close()

    def _fail(self, reason: str) -> None:
        self.damage, self._ended = f"damaged {self._kind} stream at byte {self.consumed}: {reason}", True

    def _emit(self, data: bytes) -> None:
        self.produced += len(data)
        if self._limit is not None and self.produced > self._limit:
            raise InputTooLarge(f"input inflates past max_decompressed_bytes ({self._limit} bytes)")
        self._out += data

    def _salvage(self, saved: Any, piece: bytes, step: int = _SALVAGE_STEP) -> None:
        """Replay a piece that failed in small steps from ``saved`` (the decompressor before it), then the failing
        step byte by byte: the output before the damage is kept and ``consumed`` ends at the damage."""
        for start in range(0, len(piece), step):
            part, before = piece[start : start + step], saved.copy()
            try:
                out = saved.decompress(part)
            except zlib.error:
                if step > 1:
                    self._salvage(before, part, 1)
                return
            self._emit(out)
            self.consumed += len(part)

    def _step(self) -> None:
        """Feed one piece; handle a member/frame end (next one, padding or trailing garbage) or end of input."""
        pending = getattr(self._obj, "unconsumed_tail", b"")
        if not pending and not self._input:
            self._input = self._raw.read(_PIECE[self._kind])
            if not self._input:
                self._finish()
                return
        piece = pending or self._input[: _PIECE[self._kind]]
        if not pending:
            self._input = self._input[len(piece) :]
        before = len(piece)
        saved = self._obj.copy() if self._kind == "gzip" else None
        try:
            out = self._obj.decompress(piece, _OUT) if self._kind == "gzip" else self._obj.decompress(piece)
        except (zlib.error, zstandard.ZstdError) as exc:
            if saved is not None:
                self._salvage(saved, piece)
            self._fail(f"corrupt data ({exc})")
            return
        tail = getattr(self._obj, "unconsumed_tail", b"")
        self.consumed += before - len(tail) - len(self._obj.unused_data if self._obj.eof else b"")
        self._emit(out)
        if self._obj.eof:
            self._next_member(self._obj.unused_data)

    def _next_member(self, rest: bytes) -> None:
        """After a complete member/frame: start the next one, skip zero padding, or flag trailing garbage."""
        self._input = rest + self._input
        if len(self._input) < 4:
            self._input += self._raw.read(_PIECE[self._kind])
        if not self._input:
            self._ended = True
            return
        magic = GZIP_MAGIC if self._kind == "gzip" else ZSTD_MAGIC
        if self._input.startswith(magic) or (self._kind == "zstd" and self._input[:4][1:] == b"\x2a\x4d\x18"):
            self._obj = self._new()  # the next member (or a zstd skippable frame, which the decoder skips)
            return
        if self._kind == "gzip" and not self._input.strip(b"\x00"):
            while self._input and not self._input.strip(b"\x00"):  # padding: gzip(1) ignores trailing zeros
                self.consumed += len(self._input)
                self._input = self._raw.read(_PIECE[self._kind])
            if not self._input:
                self._ended = True
                return
        self._fail(f"{len(self._input)}+ trailing bytes after a complete {self._kind} member are not a new member")

    def _finish(self) -> None:
        """End of the compressed input: fine only at a member/frame boundary."""
        self._ended = True
        if self._kind == "gzip":
            try:
                self._emit(self._obj.flush())
            except zlib.error as exc:
                self._fail(f"corrupt data ({exc})")
                return
        if not self._obj.eof:
            self._fail(
                f"truncated: the input ends inside a {self._kind} {'member' if self._kind == 'gzip' else 'frame'} "
                f"after {self.produced} decompressed bytes"
            )


def inflate_bytes(data: bytes, kind: str, limit: int) -> bytes:
    """A whole compressed body, inflated with the checks above; raises DecodeError on damage, InputTooLarge above
    ``limit``."""
    inflater = Inflater(io.BytesIO(data), kind, limit)
    body = inflater.read()
    if inflater.damage:
        raise DecodeError(inflater.damage)
    return body


def check_inflated_size(path: str, limit: int) -> None:
    """Raise :class:`InputTooLarge` if the gzip/zstd file at ``path`` inflates past ``limit`` bytes.

    Inflating only (nothing is parsed) stops a decompression bomb in well under a second at the HTTP cap, before
    any of it is decoded or stored; an uncompressed file is left alone.
    """
    with open(path, "rb") as raw:
        head = raw.read(4)
        kind = "gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head == ZSTD_MAGIC else None
        if kind is None:
            return
        raw.seek(0)
        inflater = Inflater(raw, kind, limit)
        while inflater.read(1 << 20):
            pass
