"""Write canonical LLM calls as realistic OTLP JSON span exports, in any of the conventions spanprism reads.

``spanprism simulate`` uses this to turn simulated ``llm_calls`` rows into the files a real OTel Collector
(file exporter, ``format: json``) would have written, and the ingest benchmark uses it to make its input.
The per-convention attribute layouts live in :mod:`spanprism.attribution.simulator.otlp.conventions` and
:mod:`attribution.simulator.otlp.conventions_sdk`; this module adds ids, times, resources, scopes, sibling non-LLM spans
and the envelope. Output is deterministic for a seed.

``spanprism.prompt_key`` (our extension, documented in the README) carries the row's ``prompt_key`` in every
convention; OpenInference spans also carry it as ``llm.prompt_template.version``.
"""

from __future__ import annotations

import gzip
import os
import random
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson
import pyarrow as pa

from spanprism.attribution.simulator.otlp import conventions as co
from spanprism.attribution.simulator.otlp import conventions_sdk as cos
from spanprism.attribution.simulator.otlp.encoding import filler, kv_list, num, to_ns

#: convention name (spanprism.models.schema.SOURCE_CONVENTIONS) → span builder.
BUILDERS: dict[str, co.Builder] = {
    "otel_semconv": co.otel_semconv,
    "otel_semconv_legacy": co.otel_semconv_legacy,
    "openinference": co.openinference,
    "openllmetry": cos.openllmetry,
    "openllmetry_legacy": cos.openllmetry_legacy,
    "openlit": cos.openlit,
    "langfuse": cos.langfuse,
    "vllm": co.vllm,
}
CONVENTIONS: tuple[str, ...] = tuple(BUILDERS)

#: Instrumentation scope (name, version) of each convention's emitter.
SCOPES: dict[str, tuple[str, str]] = {
    "otel_semconv": ("opentelemetry.instrumentation.openai_v2", "2.4b0"),
    "otel_semconv_legacy": ("opentelemetry.instrumentation.openai_v2", "2.1b0"),
    "openinference": ("openinference.instrumentation.openai", "0.1.66"),
    "openllmetry": ("opentelemetry.instrumentation.openai.v1", "0.62.0"),
    "openllmetry_legacy": ("opentelemetry.instrumentation.openai.v1", "0.40.14"),
    "openlit": ("openlit.otel.tracing", "1.36.2"),
    "langfuse": ("langfuse-sdk", "3.3.0"),
    "vllm": ("vllm.llm_engine", "0.33.0"),
}
_SIBLING_SCOPES = {
    "http": ("opentelemetry.instrumentation.httpx", "0.59b0"),
    "db": ("opentelemetry.instrumentation.psycopg", "0.59b0"),
    "chain": ("openinference.instrumentation.langchain", "0.1.50"),
}
SCHEMA_URL = "https://opentelemetry.io/schemas/1.28.0"


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _row_rng(row: Mapping[str, Any]) -> random.Random:
    """A per-row generator when the caller gives none: seeded from the span id, so still deterministic."""
    return random.Random(zlib.crc32(str(row.get("span_id") or row.get("trace_id") or "").encode()))


def encode_call(
    row: Mapping[str, Any], convention: str, *, with_content: bool = False, rng: random.Random | None = None
) -> dict[str, Any]:
    """One OTLP JSON span recording the canonical ``llm_calls`` row ``row`` the way ``convention`` does.

    ``row`` uses the ``llm_calls`` column names; ``start_time`` is a datetime (naive = UTC) or epoch µs.
    NULL fields are omitted. Missing ids are drawn from ``rng``.
    """
    builder = BUILDERS.get(convention)
    if builder is None:
        raise ValueError(f"unknown convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    rng = rng if rng is not None else _row_rng(row)
    start_ns = to_ns(row["start_time"])
    end_ns = start_ns + round((num(row.get("duration_ms")) or 0.0) * 1e6)
    parts = builder(row, start_ns, end_ns, rng, with_content)
    span: dict[str, Any] = {
        "traceId": str(row.get("trace_id") or _hex(rng, 128)).lower(),
        "spanId": str(row.get("span_id") or _hex(rng, 64)).lower(),
    }
    if row.get("parent_span_id"):
        span["parentSpanId"] = str(row["parent_span_id"]).lower()
    span.update(
        name=parts.name,
        kind=parts.kind,
        startTimeUnixNano=str(start_ns),
        endTimeUnixNano=str(end_ns),
        attributes=kv_list(parts.attrs),
    )
    if parts.events:
        span["events"] = parts.events
    span["status"] = parts.status
    return span


# --- non-LLM sibling spans -------------------------------------------------------------------------------------


def _sibling(llm: Mapping[str, Any], kind: str, rng: random.Random, with_content: bool) -> dict[str, Any]:
    """An HTTP client (child of the LLM call), DB or LangChain CHAIN span in the same trace as ``llm``."""
    start, end = int(llm["startTimeUnixNano"]), int(llm["endTimeUnixNano"])
    span: dict[str, Any] = {"traceId": llm["traceId"], "spanId": _hex(rng, 64)}
    if kind == "http":
        # The HTTP request under the LLM call: a url to the LLM host, but no gen_ai keys — not an LLM span.
        span["parentSpanId"] = llm["spanId"]
        t0, t1 = start + 200_000, max(start + 400_000, end - 200_000)
        attrs: dict[str, Any] = {
            "http.request.method": "POST",
            "url.full": "https://api.openai.com/v1/chat/completions",
            "server.address": "api.openai.com",
            "server.port": 443,
            "http.response.status_code": 200 if rng.random() < 0.97 else 429,
        }
        span.update(name="POST", kind=co.CLIENT)
    elif kind == "db":
        t1 = start - 2_000_000
        t0 = t1 - rng.randrange(3_000_000, 40_000_000)
        attrs = {
            "db.system.name": "postgresql",
            "db.namespace": "app",
            "db.operation.name": "SELECT",
            "db.query.text": "SELECT id, chunk FROM documents ORDER BY embedding <-> $1 LIMIT 8",
            "server.address": "db.internal",
            "server.port": 5432,
        }
        span.update(name="SELECT app.documents", kind=co.CLIENT)
    else:
        t0, t1 = start - 50_000_000, end + 5_000_000
        attrs = {
            "openinference.span.kind": "CHAIN",
            "input.value": filler(600 if with_content else 60, rng),
            "output.value": filler(400 if with_content else 40, rng),
        }
        span.update(name="RetrievalQA", kind=co.INTERNAL)
    if kind != "http" and llm.get("parentSpanId"):
        span["parentSpanId"] = llm["parentSpanId"]
    span.update(startTimeUnixNano=str(t0), endTimeUnixNano=str(t1), attributes=kv_list(attrs), status={})
    return span


# --- envelope --------------------------------------------------------------------------------------------------


def _resource(service: str, convention: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "service.name": service,
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": "1.45.0",
    }
    if convention == "openinference":
        attrs["openinference.project.name"] = service
    elif convention == "vllm":
        attrs.update({"vllm.instrumenting_module_name": "vllm.entrypoints.openai.api_server", "vllm.process_id": 1})
    return {"attributes": kv_list(attrs)}


@dataclass(slots=True)
class ExportCounts:
    """What an export wrote (filled in while iterating)."""

    lines: int = 0
    llm_spans: int = 0
    non_llm_spans: int = 0
    bytes: int = 0


class _LineBuilder:
    """Accumulates spans grouped by (service, convention) → scope, and renders one ``resourceSpans`` line."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], dict[tuple[str, str], list[dict[str, Any]]]] = {}
        self.size = 0
        self._resources: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, service: str, convention: str, scope: tuple[str, str], span: dict[str, Any]) -> None:
        self.groups.setdefault((service, convention), {}).setdefault(scope, []).append(span)
        self.size += 1

    def render(self) -> bytes:
        resource_spans = []
        for key, scopes in self.groups.items():
            resource = self._resources.get(key) or self._resources.setdefault(key, _resource(*key))
            resource_spans.append(
                {
                    "resource": resource,
                    "scopeSpans": [
                        {"scope": {"name": n, "version": v}, "spans": spans} for (n, v), spans in scopes.items()
                    ],
                    "schemaUrl": SCHEMA_URL,
                }
            )
        self.groups, self.size = {}, 0
        return orjson.dumps({"resourceSpans": resource_spans}) + b"\n"


def iter_export_lines(
    rows: Iterable[Mapping[str, Any]],
    convention_for: Callable[[Mapping[str, Any]], str],
    *,
    spans_per_line: int = 50,
    with_content: bool = False,
    extra_non_llm: float = 0.0,
    seed: int = 0,
    counts: ExportCounts | None = None,
) -> Iterator[bytes]:
    """OTLP JSON lines (Collector file exporter layout): one ``{"resourceSpans": [...]}`` per line.

    ``extra_non_llm`` non-LLM sibling spans (HTTP client, DB, CHAIN) are added per LLM span on average
    (0.25 → one for every four calls). Each line holds about ``spans_per_line`` spans. ``counts``, when given,
    is updated as lines are produced.
    """
    rng = random.Random(seed)
    line = _LineBuilder()
    credit = 0.0
    for row in rows:
        convention = convention_for(row)
        span = encode_call(row, convention, with_content=with_content, rng=rng)
        service = str(row.get("service") or "unknown_service")
        line.add(service, convention, SCOPES[convention], span)
        credit += extra_non_llm
        while credit >= 1.0:
            credit -= 1.0
            kind = rng.choices(("http", "db", "chain"), (0.4, 0.35, 0.25))[0]
            line.add(service, convention, _SIBLING_SCOPES[kind], _sibling(span, kind, rng, with_content))
            if counts is not None:
                counts.non_llm_spans += 1
        if counts is not None:
            counts.llm_spans += 1
        if line.size >= spans_per_line:
            yield _emit(line, counts)
    if line.size:
        yield _emit(line, counts)


def _emit(line: _LineBuilder, counts: ExportCounts | None) -> bytes:
    data = line.render()
    if counts is not None:
        counts.lines += 1
        counts.bytes += len(data)
    return data


def iter_table_rows(table: pa.Table, batch_rows: int = 8192) -> Iterator[dict[str, Any]]:
    """Rows of an ``llm_calls`` Arrow table as dicts, one record batch at a time (no full ``to_pylist`` copy)."""
    for batch in table.to_batches(max_chunksize=batch_rows):
        yield from batch.to_pylist()


def write_export(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    convention_for: Callable[[Mapping[str, Any]], str] | str | None = None,
    **options: Any,
) -> ExportCounts:
    """Write ``rows`` as an OTLP JSON-lines file (gzip when ``path`` ends in ``.gz``); returns what was written.

    ``convention_for`` is a function of the row, a fixed convention name, or None to use each row's
    ``source_convention`` (default ``otel_semconv``). ``options`` are passed to :func:`iter_export_lines`.
    """
    if convention_for is None:

        def convention_for(row: Mapping[str, Any]) -> str:
            return str(row.get("source_convention") or "otel_semconv")
    elif isinstance(convention_for, str):
        fixed = convention_for
        if fixed not in BUILDERS:
            raise ValueError(f"unknown convention {fixed!r}; expected one of {', '.join(CONVENTIONS)}")

        def convention_for(row: Mapping[str, Any]) -> str:
            return fixed

    counts = ExportCounts()
    path = os.fspath(path)
    # compresslevel 1: exports are written once and read once; level 6 triples the writing time for ~10 % size.
    fh: IO[bytes] = gzip.open(path, "wb", compresslevel=1) if path.endswith(".gz") else open(path, "wb")  # noqa: SIM115
    with fh:
        for data in iter_export_lines(rows, convention_for, counts=counts, **options):
            fh.write(data)
    return counts
