"""Format sniffing: which of the input formats :mod:`spanprism.ingest.decode` reads a decompressed stream holds,
from its first bytes (JSON lines, a JSON document, protobuf, length-prefixed records, zstd records), including JSON
lines whose first line is damaged."""

from __future__ import annotations

import re

import orjson

from spanprism.ingest.framing import ZSTD_MAGIC

#: How many lines after a damaged first line may be tried as OTLP requests when sniffing JSON lines.
_SNIFF_LINES = 16
WHITESPACE = b" \t\r\n"
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def sniff(head: bytes) -> str | None:
    """The format of a decompressed stream from its first bytes (the table in :mod:`spanprism.ingest.decode`);
    None if unknown."""
    body = head.lstrip(WHITESPACE)
    if not body:
        return None
    if body[:1] in b"{[" and not _CONTROL.search(head, 0, 4096):
        return "json" if _is_document(body) else "jsonl"
    if _damaged_json_lines(body):
        return "jsonl"
    if head[:1] == b"\x0a":
        return "proto"
    if head[4:8] == ZSTD_MAGIC:
        return "proto_lp_zstd"
    if (len(head) >= 5 and head[4] == 0x0A) or head[:4] == bytes(4):
        return "proto_lp"
    return None


def _damaged_json_lines(body: bytes) -> bool:
    """JSON lines whose first line is damaged (torn write, invalid UTF-8, NULs): a later line of the head is a
    whole OTLP export request on its own. Only consulted when the head does not look like JSON text (a binary or
    NUL-filled first line), so healthy files never pay for it; the damaged line then becomes one quarantined record,
    not the whole file."""
    _, _, rest = body.partition(b"\n")
    complete = rest.split(b"\n")[:-1]  # the last piece may be cut by the sniff window
    return any(line[:1] == b"{" and _is_otlp_request(line) for line in complete[:_SNIFF_LINES])


def _is_otlp_request(line: bytes) -> bool:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return type(doc) is dict and ("resourceSpans" in doc or "resource_spans" in doc)


def _is_document(body: bytes) -> bool:
    """True for a pretty-printed document: its first line is not a complete JSON value on its own."""
    lines = iter(body.split(b"\n", 16)[:16])
    first = next(lines)
    if len(first) == len(body):
        return False  # no line end in the sniffed head: a long JSON line (a pretty document starts short)
    try:
        orjson.loads(first)
        return False
    except orjson.JSONDecodeError:
        pass
    if first.strip() in (b"{", b"["):
        return True
    following = next((line for line in lines if line.strip()), b"")
    # A JSON-lines file with a broken first line still starts the next line with an object at column 0;
    # a pretty-printed document indents its inner objects.
    return not following.startswith(b"{")
