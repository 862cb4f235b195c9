"""OTLP/HTTP trace receiver: ``POST /v1/traces`` (protobuf or JSON, optionally gzip/deflate/zstd).

Follows the OTLP/HTTP spec: the response is an ExportTraceServiceResponse in the request's content type,
with ``partial_success`` counting the spans that were quarantined (and why); errors carry a
``google.rpc.Status`` body; 400 means "do not retry" (undecodable), 413 "too large", 415 "unsupported type or
encoding", 503 + ``Retry-After`` "queue full, retry later" (the OTel SDK exporters and the Collector retry it).
A request is answered only after its rows are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from spanprism.api.deps import require
from spanprism.api.security import Principal
from spanprism.api.services.ingest import IngestService, QueueFull, ShuttingDown
from spanprism.ingest.decode import BodyTooLarge, DecodeError
from spanprism.ingest.otlp_http import UnsupportedMedia, check_headers, media_type, quarantined_body
from spanprism.ingest.records import Quarantined

router = APIRouter(tags=["otlp"])

#: Seconds a client is asked to wait after a 503 (the writer drains a full default queue in about that long).
RETRY_AFTER_S = 2
_ingest_scope = require("ingest")


async def otlp_auth(request: Request) -> Principal:
    """``IngestAuth`` (bearer or the ``otlp_key_header``), counting refusals in the rejected-requests metric."""
    try:
        return await _ingest_scope(request)
    except HTTPException as exc:
        request.app.state.metrics.requests_rejected.labels(code=str(exc.status_code)).inc()
        raise


OtlpAuth = Annotated[Principal, Depends(otlp_auth)]


def _encode(message: Message, as_json: bool) -> tuple[bytes, str]:
    if as_json:
        return orjson.dumps(MessageToDict(message)), "application/json"
    return message.SerializeToString(), "application/x-protobuf"


def _error(request: Request, as_json: bool, http: int, code: int, message: str, retry: bool = False) -> Response:
    request.app.state.metrics.requests_rejected.labels(code=str(http)).inc()
    body, media = _encode(status_pb2.Status(code=code, message=message), as_json)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if retry else None
    return Response(body, status_code=http, media_type=media, headers=headers)


def rejection_message(quarantined: list[Quarantined], limit: int = 3) -> str:
    """``"2 quarantined: reason A (x2)"``: the most common reasons, bounded (the full list is in the API)."""
    reasons = Counter(q.reason for q in quarantined).most_common()
    shown = "; ".join(f"{r} (x{n})" if n > 1 else r for r, n in reasons[:limit])
    more = f"; and {len(reasons) - limit} more reasons" if len(reasons) > limit else ""
    return f"{len(quarantined)} quarantined (see GET /api/v1/quarantine): {shown}{more}"


async def read_body_to(request: Request, limit: int, write: Callable[[bytes], object]) -> int:
    """Stream the body into ``write``, refusing (before reading) a declared length over ``limit`` and any stream
    passing it; returns the byte count."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the {limit}-byte limit")
    total = 0
    async for part in request.stream():
        total += len(part)
        if total > limit:
            raise BodyTooLarge(f"body exceeds the {limit}-byte limit")
        write(part)
    return total


async def read_body(request: Request, limit: int) -> bytes:
    """The whole (bounded) request body."""
    body = bytearray()
    await read_body_to(request, limit, body.extend)
    return bytes(body)


async def _keep_undecodable(service: IngestService, body: bytes, content_type: str, encoding: str | None,
                            reason: str) -> None:  # fmt: skip
    """Quarantine the body the client is told not to resend; a full queue or a storage error only loses the copy."""
    out = quarantined_body(body, source="otlp/http", content_type=content_type, content_encoding=encoding,
                           reason=reason)  # fmt: skip
    with contextlib.suppress(QueueFull, ShuttingDown, RuntimeError):
        await asyncio.wrap_future(service.enqueue(out))


@router.post(
    "/v1/traces",
    summary="OTLP/HTTP trace export (protobuf or JSON)",
    response_class=Response,
    responses={
        200: {"description": "ExportTraceServiceResponse (partial_success counts quarantined spans)"},
        400: {"description": "undecodable body (google.rpc.Status)"},
        413: {"description": "body over max_body_bytes (also after decompression)"},
        415: {"description": "unsupported content type or encoding"},
        503: {"description": "ingest queue full; retry after Retry-After seconds"},
    },
)
async def export_traces(request: Request, _: OtlpAuth) -> Response:
    settings = request.app.state.settings
    content_type, encoding = request.headers.get("content-type", ""), request.headers.get("content-encoding")
    as_json = media_type(content_type) == "application/json"
    service: IngestService | None = getattr(request.app.state, "ingest", None)
    body: bytes | None = None
    try:
        check_headers(content_type, encoding)
        if service is None:
            raise ShuttingDown("the ingest service is not running")
        with service.admitted():  # sheds load before the body is read; bounds bodies held in memory
            body = await read_body(request, settings.max_body_bytes)
            out = await service.decode(body, source="otlp/http", content_type=content_type,
                                       content_encoding=encoding)  # fmt: skip
            request.app.state.metrics.spans_received.inc(out.spans_seen)
            committed = service.enqueue(out)
        counts = await asyncio.wrap_future(committed)
    except UnsupportedMedia as exc:
        return _error(request, as_json, 415, code_pb2.INVALID_ARGUMENT, str(exc))
    except BodyTooLarge as exc:
        return _error(request, as_json, 413, code_pb2.RESOURCE_EXHAUSTED, str(exc))
    except DecodeError as exc:
        reason = f"undecodable OTLP body: {exc}"
        if body is not None and service is not None:
            await _keep_undecodable(service, body, content_type, encoding, reason)
        return _error(request, as_json, 400, code_pb2.INVALID_ARGUMENT, reason)
    except (QueueFull, ShuttingDown) as exc:
        return _error(request, as_json, 503, code_pb2.UNAVAILABLE, str(exc), retry=True)
    except RuntimeError as exc:  # storage failed (logged by the writer); the client may retry
        return _error(request, as_json, 500, code_pb2.INTERNAL, str(exc))
    reply = ExportTraceServiceResponse()
    if counts.quarantined:
        reply.partial_success.rejected_spans = counts.quarantined
        reply.partial_success.error_message = rejection_message(out.quarantined)
    payload, media = _encode(reply, as_json)
    return Response(payload, media_type=media)
