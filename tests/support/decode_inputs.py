"""Decoder test inputs built from real SDK spans: three spans over two scopes, encoded every way a Collector, an
SDK dump or a generic marshaller writes them, and what decode must make of them (derived from the SDK objects).

Shared by the decode tests (``tests/test_decode_*.py``): the spans are encoded with the real OTLP protobuf encoder
(``encode_spans``) and ``json_format.MessageToJson`` (base64 ids, enum names, camel or snake keys).
"""

from __future__ import annotations

import base64
import gzip
import io
import pickle
from typing import Any

import orjson
import zstandard
from google.protobuf.json_format import MessageToDict, MessageToJson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from spanprism.ingest.decode import decode_chunk, iter_chunks, open_input
from spanprism.ingest.records import DecodeResult, RawChunk
from support.spans import T0, SeededIds


def make_sdk_spans() -> tuple[ReadableSpan, ...]:
    """Three spans, two scopes: every SDK attribute type, an event, a child with ERROR status, an OK span."""
    exporter = InMemorySpanExporter()
    resource = Resource.create({"service.name": "decode-test", "deployment.environment.name": "ci"})
    provider = TracerProvider(resource=resource, id_generator=SeededIds(42))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    llm = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0")
    http = provider.get_tracer("opentelemetry.instrumentation.httpx")
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.request.stream": True,
        "gen_ai.request.temperature": 0.7,
        "gen_ai.response.finish_reasons": ("stop", "length"),
        "token.ids": (1, 2, -3),
        "scores": (0.5, 1.25),
        "flags": (True, False),
    }
    root = llm.start_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes=attrs, start_time=T0)
    root.add_event("gen_ai.content.completion.chunk", {"index": 0, "text": "Hel"}, timestamp=T0 + 400_000_000)
    child = http.start_span("POST", context=set_span_in_context(root), kind=SpanKind.CLIENT, start_time=T0 + 10)
    child.set_status(Status(StatusCode.ERROR, "rate limited"))
    child.end(end_time=T0 + 900_000_000)
    root.end(end_time=T0 + 1_250_000_000)
    other = llm.start_span("embeddings", kind=SpanKind.SERVER, start_time=T0 + 5)
    other.set_status(Status(StatusCode.OK))
    other.end(end_time=T0 + 6)
    provider.shutdown()
    return exporter.get_finished_spans()


def expected(spans: tuple[ReadableSpan, ...]) -> list[dict[str, Any]]:
    """What decode must produce, derived from the SDK objects themselves (not from any encoding)."""

    def plain(attrs: Any) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(attrs).items()}

    return sorted(
        (
            {
                "trace_id": f"{s.context.trace_id:032x}",
                "span_id": f"{s.context.span_id:016x}",
                "parent_span_id": f"{s.parent.span_id:016x}" if s.parent else None,
                "name": s.name,
                "kind": s.kind.value + 1,  # the SDK enum starts at INTERNAL=0, OTLP at UNSPECIFIED=0
                "start_ns": s.start_time,
                "end_ns": s.end_time,
                "attributes": plain(s.attributes),
                "resource": plain(s.resource.attributes),
                "scope": s.instrumentation_scope.name,
                "events": [
                    {"name": e.name, "time_ns": e.timestamp, "attributes": plain(e.attributes)} for e in s.events
                ],
                "status_code": s.status.status_code.value,
                "status_message": s.status.description or "",
            }
            for s in spans
        ),
        key=lambda r: r["span_id"],
    )


def comparable(result: DecodeResult) -> list[dict[str, Any]]:
    assert not result.quarantined, result.quarantined
    keep = ("source", "location", "raw")
    return sorted(({k: v for k, v in s.items() if k not in keep} for s in result.spans), key=lambda r: r["span_id"])


def decode_all(data: bytes | Any, source: str = "test", **options: int) -> tuple[list[RawChunk], DecodeResult]:
    """open_input → iter_chunks → decode_chunk, with each chunk pickled as it would be for a worker process."""
    stream = open_input(io.BytesIO(data) if isinstance(data, bytes) else data)
    chunks = list(iter_chunks(stream, source, **options))
    total = DecodeResult()
    for chunk in chunks:
        result = decode_chunk(pickle.loads(pickle.dumps(chunk)))
        total.spans += result.spans
        total.quarantined += result.quarantined
    return chunks, total


def length_prefixed(records: list[bytes]) -> bytes:
    return b"".join(len(r).to_bytes(4, "big") + r for r in records)


def canonical_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """Spec-style OTLP JSON: hex ids (upper-case, to test case folding), enums as integers, ints as strings."""

    def fix(node: Any) -> Any:
        if isinstance(node, list):
            return [fix(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {k: fix(v) for k, v in node.items()}
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in out:
                out[key] = base64.b64decode(out[key]).hex().upper()
        if isinstance(out.get("kind"), str):
            out["kind"] = ["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT"].index(
                out["kind"]
            )
        if isinstance(out.get("code"), str):
            out["code"] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"].index(out["code"])
        return out

    return fix(MessageToDict(request))


def encodings(request: ExportTraceServiceRequest) -> dict[str, tuple[bytes, str]]:
    """Every file shape a Collector, an SDK dump or a generic marshaller produces, with its expected format."""
    proto = request.SerializeToString()
    camel = MessageToJson(request, indent=None).encode()
    snake = MessageToJson(request, indent=None, preserving_proto_field_name=True).encode()
    hexed = orjson.dumps(canonical_json(request))
    zstd = zstandard.ZstdCompressor()
    return {
        "jsonl_camel_base64": (camel + b"\n", "jsonl"),
        "jsonl_snake_base64": (snake + b"\n", "jsonl"),
        "jsonl_canonical_hex": (hexed + b"\n", "jsonl"),
        "json_pretty_document": (MessageToJson(request, indent=2).encode(), "json"),
        "json_list_of_documents": (orjson.dumps([orjson.loads(hexed)], option=orjson.OPT_INDENT_2), "json"),
        "proto_single": (proto, "proto"),
        "proto_length_prefixed": (length_prefixed([proto]), "proto_lp"),
        "legacy_zstd_records_proto": (length_prefixed([zstd.compress(proto)]), "proto_lp_zstd"),
        "legacy_zstd_records_json": (length_prefixed([zstd.compress(camel)]), "proto_lp_zstd"),
        "gzip_jsonl": (gzip.compress(hexed + b"\n"), "jsonl"),
        "native_zstd_proto_lp": (zstd.compress(length_prefixed([proto])), "proto_lp"),
        "native_zstd_jsonl_two_frames": (zstd.compress(b"\n") + zstd.compress(camel + b"\n"), "jsonl"),
    }
