"""Re-decoding a quarantined record with the current code (pure): raw bytes + where they came from → output.

A quarantined ``raw`` is whatever piece failed: a whole line, document, message or record (decoded as an
input of its own, format sniffed), a JSON ``resourceSpans``/``scopeSpans`` container, a legacy protobuf
``ResourceSpans``, or one span (JSON object or serialized protobuf ``Span``). The piece is re-wrapped into an
``ExportTraceServiceRequest`` and goes through the normal decode → normalize path. A span quarantined on its
own carries no resource, so re-driven spans lose resource attributes such as ``service.name``.
"""

from __future__ import annotations

import io
import re
from typing import Any

import orjson
from google.protobuf.message import DecodeError as ProtoDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from spanprism.ingest import otlp_json, otlp_proto
from spanprism.ingest.decode import DecodeError, decode_chunk, iter_chunks, open_input, show
from spanprism.ingest.pipeline import process_decoded
from spanprism.ingest.records import Batch, DecodeResult, Quarantined

_SPAN = re.compile(r"span \d+$")
_RESOURCE = re.compile(r"resourceSpans\[\d+\]$")
_SCOPE = re.compile(r"scopeSpans\[\d+\]$")
_LEGACY = "legacy instrumentation_library_spans"


def _json_piece(raw: bytes, location: str) -> dict[str, Any]:
    """The JSON piece wrapped back into an envelope."""
    try:
        piece = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from None
    if _SPAN.search(location):
        return {"resourceSpans": [{"scopeSpans": [{"spans": [piece]}]}]}
    if _SCOPE.search(location):
        return {"resourceSpans": [{"scopeSpans": [piece]}]}
    return {"resourceSpans": [piece]}


def _proto_piece(raw: bytes, location: str) -> bytes:
    """The protobuf piece wrapped back into a serialized request."""
    request = ExportTraceServiceRequest()
    try:
        if _SPAN.search(location):
            request.resource_spans.add().scope_spans.add().spans.append(Span.FromString(raw))
        else:
            request.resource_spans.append(ResourceSpans.FromString(raw))
    except (ProtoDecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"invalid protobuf ({len(raw)} bytes): {exc}") from None
    return request.SerializeToString()


def _whole_input(raw: bytes, source: str, result: DecodeResult) -> None:
    for chunk in iter_chunks(open_input(io.BytesIO(raw)), source):
        part = decode_chunk(chunk)
        result.spans += part.spans
        result.quarantined += part.quarantined


def redecode(raw: bytes, *, source: str, location: str) -> DecodeResult:
    """Decode one quarantined record again; problems come back as quarantined items, never as exceptions."""
    result = DecodeResult()
    is_piece = bool(_SPAN.search(location) or _SCOPE.search(location) or _RESOURCE.search(location))
    try:
        if is_piece and raw.lstrip()[:1] == b"{":
            otlp_json.decode_request(_json_piece(raw, location), source, location, result.spans,
                                     result.quarantined)  # fmt: skip
        elif is_piece or location.endswith(_LEGACY):
            otlp_proto.decode_request(_proto_piece(raw, location), source, location, result.spans,
                                      result.quarantined)  # fmt: skip
        elif raw.strip():
            _whole_input(raw, source, result)
        else:
            result.quarantined.append(Quarantined(source, location, "empty record", raw))
    except DecodeError as exc:
        result.quarantined.append(Quarantined(source, location, str(exc), raw))
    except Exception as exc:  # one record must never fail a re-drive of many
        reason = f"re-decode failed: {type(exc).__name__}: {show(str(exc))}"
        result.quarantined.append(Quarantined(source, location, reason, raw))
    return result


def redrive_record(raw: bytes, *, source: str, location: str, tenant_attribute: str | None = None) -> Batch:
    """Re-decode and normalize one quarantined record; ``quarantined`` is empty when it now parses."""
    return process_decoded(redecode(raw, source=source, location=location), source, len(raw), tenant_attribute)
