"""Fast Arrow column builders for simulated calls: hex ids and repeated strings without per-row Python.

Ids are random bytes from the series' seeded generator, hex-encoded in one call and cut into fixed-width strings
straight from Arrow buffers; repeated values (service, region, ...) go through dictionary arrays.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def hex_ids(rng: np.random.Generator, n: int, chars: int, prefix: str = "") -> pa.Array:
    """``n`` strings ``prefix + chars`` lowercase hex digits (deterministic given ``rng``)."""
    raw = rng.integers(0, 256, size=n * ((chars + 1) // 2), dtype=np.uint8).tobytes().hex().encode()
    digits = np.frombuffer(raw, dtype=np.uint8).reshape(n, -1)[:, :chars] if n else np.zeros((0, chars), np.uint8)
    pre = np.frombuffer(prefix.encode(), dtype=np.uint8)
    body = np.concatenate((np.broadcast_to(pre, (n, pre.size)), digits), axis=1) if pre.size else digits
    return _fixed_width(body)


def _fixed_width(body: np.ndarray) -> pa.Array:
    """A string array whose row ``i`` is the bytes of ``body[i]`` (all rows the same width)."""
    n, width = body.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    data = pa.py_buffer(np.ascontiguousarray(body).tobytes())
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), data)


def uuid_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` UUID-formatted (8-4-4-4-12) lowercase hex strings."""
    digits = np.frombuffer(hex_ids(rng, n, 32).buffers()[2], dtype=np.uint8)[: n * 32].reshape(n, 32)
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    body = np.concatenate(
        (digits[:, :8], dash, digits[:, 8:12], dash, digits[:, 12:16], dash, digits[:, 16:20], dash, digits[:, 20:]),
        axis=1,
    )
    return _fixed_width(body)


def coded(codes: np.ndarray, values: list[str | None]) -> pa.Array:
    """A string array from integer ``codes`` into ``values`` (None entries and negative codes become NULL)."""
    table = pa.array([*values, None], type=pa.string())
    codes = np.asarray(codes, dtype=np.int32)
    return table.take(pa.array(np.where(codes < 0, len(values), codes).astype(np.int32)))


def constant(value: str | None, n: int) -> pa.Array:
    """``n`` copies of one string (or NULLs)."""
    return coded(np.zeros(n, np.int32), [value])


def masked(values: np.ndarray, null: np.ndarray, typ: pa.DataType) -> pa.Array:
    """A numeric Arrow array with ``null`` positions set to NULL."""
    return pa.array(values, type=typ, mask=null)


def hex_of_keys(keys: np.ndarray) -> pa.Array:
    """16-char lowercase hex strings of uint64 ``keys`` (big-endian)."""
    n = keys.size
    raw = keys.astype(">u8").tobytes().hex().encode()
    offsets = np.arange(0, (n + 1) * 16, 16, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(raw))
