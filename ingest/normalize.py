"""Normalize decoded spans into canonical ``llm_calls`` rows (pure; the loader writes them).

``normalize(spans)`` keeps the spans that are LLM calls (see :func:`spanprism.ingest.conventions.is_llm_span`), maps
every instrumentation convention onto the columns of ``spanprism.models.schema.LLM_CALLS_SCHEMA`` (CONVENTIONS.md §7,
first present wins), and quarantines the LLM spans that cannot be trusted, each with a precise reason and
its raw bytes. Rows are built as tuples in column order and turned into one Arrow table per call, which keeps
the per-span cost to dictionary lookups.

Status: ``'error'`` when ``status.code`` is 2, ``error.type`` is set, an ``exception`` event exists, or
``http.response.status_code`` ≥ 400; ``error_type`` is ``error.type`` without the ``<class '…'>`` wrapper that
openai-v2 writes, else the first exception event's ``exception.type``, else the HTTP status code as text.
Provider for vLLM server spans (which carry none) is ``"vllm"``: the engine is the provider the latency
belongs to.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from spanprism.ingest import conventions as cv
from spanprism.ingest.coerce import Rejected, as_str, first_str, seconds
from spanprism.ingest.endpoints import DEPLOYMENT_HEADER, URL_KEYS, deployment, endpoint, region
from spanprism.ingest.identity import STREAM_LOG_PREFIX
from spanprism.ingest.limits import Limits, bound_rows
from spanprism.ingest.records import NormalizeResult, Quarantined, SpanRecord
from spanprism.ingest.timing import EventSummary, derive_timing, summarize_events
from spanprism.ingest.tokens import extract_tokens
from spanprism.models.schema import LLM_CALL_COLUMNS, LLM_CALLS_SCHEMA, SPAN_LINKS_SCHEMA

#: Keys read only by the rarely-needed extractors (request id, deployment, prompt key, invocation parameters):
#: a span carrying none of them skips those calls, which keeps the typical span cheap.
_RARE_KEYS: frozenset[str] = frozenset(
    {*cv.REQUEST_ID_KEYS, *cv.PROMPT_KEYS, *URL_KEYS, DEPLOYMENT_HEADER, "llm.invocation_parameters"}
)
_VALID_STATUS = (0, 1, 2)
#: Span kinds that can sit between two LLM spans of one call (an instrumentation's span around the SDK's, a
#: framework step, an HTTP client span): unspecified, internal, client. Server and consumer spans start a process's
#: handling of a request and producer spans send a message: an LLM call's spans never nest across them.
_LINK_KINDS = frozenset({0, 1, 3})
_HEX_ID = re.compile(r"^[0-9a-f]{16}$")
_STATUS_ERROR = 2


_DOTTED_CLASS = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*\.([A-Z]\w*)$")


def _error_type_text(value: Any) -> str | None:
    """Error class name: unwraps ``<class 'openai.RateLimitError'>`` and drops module paths.

    Emitters disagree (``<class 'openai.RateLimitError'>``, ``openai.RateLimitError``, ``RateLimitError``); keeping
    the class name only makes the same failure group together whichever library recorded it.
    """
    text = as_str(value)
    if text and text.startswith("<class '") and text.endswith("'>"):
        text = text[8:-2]
    if text:
        dotted = _DOTTED_CLASS.match(text)
        return dotted.group(1) if dotted else text
    return None


_OPENLIT_TTFT = "gen_ai.server.time_to_first_token"
_OPENLIT_SCOPE = "openlit.instrumentation."


def _openlit_bare_error(span: SpanRecord) -> SpanRecord | None:
    """OpenLIT's span of a failed call (Anthropic's, at least) carries no attribute at all, only its name
    (``chat <request model>``), its scope (``openlit.instrumentation.<provider>``), an error status and the exception
    event: still an LLM call that failed, with what the name and scope tell (None for anything else)."""
    scope = span["scope"]
    if not scope.startswith(_OPENLIT_SCOPE) or span["status_code"] != _STATUS_ERROR:
        return None
    op, _, model = span["name"].partition(" ")
    if op not in cv.LLM_OPERATIONS or "gen_ai.operation.name" in span["attributes"]:
        return None
    known = {"gen_ai.operation.name": op, "gen_ai.provider.name": scope[len(_OPENLIT_SCOPE) :],
             "telemetry.sdk.name": "openlit"}  # fmt: skip
    if model.strip():
        known["gen_ai.request.model"] = model.strip()
    return {**span, "attributes": {**span["attributes"], **known}}  # type: ignore[typeddict-item]


def _openlit_anthropic(attrs: dict[str, Any]) -> bool:
    """OpenLIT's Anthropic instrumentation stores Anthropic's exclusive input count in ``gen_ai.usage.input_tokens``."""
    if "gen_ai.server.time_to_first_token" not in attrs and attrs.get("telemetry.sdk.name") != "openlit":
        return False
    return "anthropic" in (attrs.get("gen_ai.provider.name"), attrs.get("gen_ai.system"))


def _http_status(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def status(span: SpanRecord, attrs: Mapping[str, Any], ev: EventSummary) -> tuple[str, str | None]:
    """(``'ok'``/``'error'``, error_type) from span status, ``error.type``, exception events and HTTP status."""
    code = span["status_code"]
    if code not in _VALID_STATUS:
        raise Rejected(f"unknown status code {code}")
    error_type = attrs.get("error.type")
    http = _http_status(attrs.get("http.response.status_code"))
    http_failed = http is not None and http >= 400
    if code != _STATUS_ERROR and error_type is None and not ev.has_exception and not http_failed:
        return "ok", None
    detail = _error_type_text(error_type) if error_type is not None else None
    return "error", detail or _error_type_text(ev.exception_type) or (str(http) if http_failed else None)


def _implied_streaming(convention: str, stream_log: bool, output_tokens: int | None) -> bool | None:
    """What an emitter's silence about streaming means: the Anthropic SDK sets ``gen_ai.request.stream`` only on
    streamed calls; a Logfire stream log is a stream; a Logfire request span with usage read a whole response
    (a streamed call's request span ends at the headers, its usage is on the stream log)."""
    if convention == "anthropic_sdk":
        return False
    if convention == "logfire":
        return True if stream_log else (False if output_tokens is not None else None)
    return None


def _logfire_stream_start(span: SpanRecord) -> int | None:
    """Start of Logfire's ``streaming response from … took …s`` log span re-based to where the reading of the
    stream began (its end minus its ``duration`` attribute): the log then covers the stream, and the loader can
    pair it with the request span that ended at the response headers (ingest/identity.py)."""
    if not span["scope"].startswith("logfire.") or not span["name"].startswith(STREAM_LOG_PREFIX):
        return None
    try:  # a number, or its text (the ClickHouse exporter stores every attribute value as a string)
        took = seconds("duration", span["attributes"].get("duration"))
    except Rejected:
        return None
    if not took < 86400:
        return None
    return span["end_ns"] - round(took * 1e9)


def _row(span: SpanRecord, tenant_attribute: str | None) -> tuple[Any, ...]:
    """One canonical row, in ``LLM_CALL_COLUMNS`` order; raises :class:`Rejected` for unusable spans."""
    if len(span["trace_id"]) != 32 or len(span["span_id"]) != 16:
        raise Rejected(f"bad ids (trace_id {span['trace_id']!r}, span_id {span['span_id']!r})")
    if span["start_ns"] >> 64 or span["end_ns"] >> 64:  # JSON digit strings are not range-checked when parsed
        raise Rejected(f"timestamp out of the uint64 range (start {span['start_ns']}, end {span['end_ns']})")
    attrs = span["attributes"]
    resource = span["resource"]
    ev = summarize_events(span["events"])
    state, error_type = status(span, attrs, ev)
    rare = not _RARE_KEYS.isdisjoint(attrs)
    params = cv.invocation_parameters(attrs) if rare else None
    # OpenInference's Anthropic instrumentation omits zero cache counts (CONVENTIONS.md §2): absence means 0 there.
    oi_anthropic = "openinference.span.kind" in attrs and "anthropic" in (
        attrs.get("llm.provider"),
        attrs.get("llm.system"),
    )
    openlit_anthropic = _openlit_anthropic(attrs)
    tokens = extract_tokens(attrs, absent_cache_is_zero=oi_anthropic, exclusive_input=openlit_anthropic)
    stream_flag = cv.explicit_streaming(attrs, params)
    stream_start = _logfire_stream_start(span)
    start_ns = span["start_ns"] if stream_start is None else stream_start
    if openlit_anthropic and _OPENLIT_TTFT in attrs:
        # OpenLIT's Anthropic stream wrapper starts its clock when the response headers are in and stops it at the
        # first event (message_start, sent with the headers): ~0 ms, not a first token. No TTFT beats a wrong one.
        attrs = {k: v for k, v in attrs.items() if k != _OPENLIT_TTFT}
    timing = derive_timing(start_ns, span["end_ns"], attrs, ev, stream_flag, tokens.output)
    streaming = stream_flag if stream_flag is not None else (True if timing.stream_evidence else None)
    name = span["name"]
    convention = cv.scope_convention(span["scope"]) or cv.source_convention(name, attrs, ev.chunk_event,
                                                                            tokens.from_raw)  # fmt: skip
    if streaming is None:
        streaming = _implied_streaming(convention, stream_start is not None, tokens.output)
    response_id = as_str(attrs.get("gen_ai.response.id")) or tokens.response_id
    response_model = first_str(attrs, cv.RESPONSE_MODEL_KEYS)
    # A failed call's "response model" equal to the request model is a copy (OpenInference's llm.model_name).
    no_answer = state == "error" and tokens.output is None and response_model == cv.request_model(attrs, params)
    if response_id is None and (convention in ("logfire", "pydantic_ai") or no_answer):
        # Logfire and pydantic-ai copy the request model there before any response is read, and OpenInference's
        # llm.model_name is the request model on a failed call: none of them saw a response.
        response_model = None
    ep = endpoint(attrs, has_url=rare)
    provider = cv.provider(attrs, ep.server_address) or ("vllm" if convention == "vllm" else None)
    return (
        span["trace_id"],
        span["span_id"],
        span["parent_span_id"],
        response_id,
        first_str(attrs, cv.REQUEST_ID_KEYS) if rare else None,
        cv.service(attrs, resource),
        cv.tenant(attrs, resource, tenant_attribute),
        cv.operation(attrs),
        provider,
        cv.request_model(attrs, params),
        response_model,
        first_str(attrs, cv.FINGERPRINT_KEYS),
        ep.server_address,
        region(attrs, resource, ep),
        deployment(attrs) if rare else None,
        cv.prompt_key(attrs) if rare else None,
        start_ns // 1000,
        timing.duration_ms,
        timing.ttft_ms,
        timing.decode_ms,
        timing.itl_ms,
        timing.itl_p95_ms,
        timing.queue_ms,
        streaming,
        state,
        error_type,
        cv.finish_reason(attrs),
        tokens.input,
        tokens.cache_read,
        tokens.cache_write,
        tokens.uncached,
        tokens.output,
        tokens.reasoning,
        convention,
        None,  # ingest_batch: the loader fills it
        name,
        ep.server_port,
        timing.chunk_count,
        first_str(attrs, cv.SESSION_KEYS),
        None,  # merged_span_ids: the loader fills it when it folds several spans into this call
    )


#: The column order ``_row`` builds; checked against the schema at import so a schema change cannot misalign rows.
_ROW_COLUMNS: tuple[str, ...] = (
    "trace_id", "span_id", "parent_span_id", "response_id", "provider_request_id", "service", "tenant",
    "operation", "provider", "request_model", "response_model", "system_fingerprint", "server_address", "region",
    "deployment", "prompt_key", "start_time", "duration_ms", "ttft_ms", "decode_ms", "itl_ms", "itl_p95_ms",
    "queue_ms", "streaming", "status", "error_type", "finish_reason", "input_tokens", "cache_read_tokens",
    "cache_write_tokens", "uncached_input_tokens", "output_tokens", "reasoning_tokens", "source_convention",
    "ingest_batch", "span_name", "server_port", "chunk_count", "session_id", "merged_span_ids",
)  # fmt: skip
if _ROW_COLUMNS != LLM_CALL_COLUMNS:
    raise ImportError("models.schema.LLM_CALL_COLUMNS changed: update ingest.normalize._row to match")
_CONVENTION_INDEX = _ROW_COLUMNS.index("source_convention")


def _table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """One Arrow table for all rows: transpose once, convert each column once."""
    if not rows:
        return LLM_CALLS_SCHEMA.empty_table()
    columns = list(zip(*rows, strict=True))
    arrays = [pa.array(col, type=field.type) for col, field in zip(columns, LLM_CALLS_SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=LLM_CALLS_SCHEMA)


def normalize(spans: Iterable[SpanRecord], *, tenant_attribute: str | None = None,
              limits: Limits | None = None) -> NormalizeResult:  # fmt: skip
    """Canonical rows for the LLM spans in ``spans``; unusable LLM spans quarantined, others counted.

    ``tenant_attribute`` names the span (then resource) attribute holding the tenant; None leaves it NULL.
    ``limits`` bounds text lengths and start times (:func:`spanprism.ingest.limits.bound_rows`; defaults if None).
    """
    rows: list[tuple[Any, ...]] = []
    kept: list[SpanRecord] = []  # the span of each row, for the bounds check to quarantine
    quarantined: list[Quarantined] = []
    skipped = 0
    links: list[tuple[str, str, str, int]] = []
    for span in spans:
        if not cv.is_llm_span(span["name"], span["attributes"]):
            bare = _openlit_bare_error(span)
            if bare is None:
                skipped += 1
                if _linkable(span):  # only its parent link is kept: it may sit between two LLM spans of one call
                    links.append((span["trace_id"], span["span_id"], span["parent_span_id"], span["start_ns"] // 1000))
                continue
            span = bare
        try:
            rows.append(_row(span, tenant_attribute))
            kept.append(span)
        except Rejected as exc:
            quarantined.append(Quarantined(span["source"], span["location"], str(exc), span["raw"]()))
        except Exception as exc:  # a malformed span must never crash the batch (DESIGN.md failure rules)
            reason = f"normalize failed: {type(exc).__name__}: {exc}"
            quarantined.append(Quarantined(span["source"], span["location"], reason, span["raw"]()))
    table, out_of_bounds = bound_rows(_table(rows), kept, limits or Limits())
    if out_of_bounds:
        quarantined.extend(out_of_bounds)
        conventions = Counter(table["source_convention"].to_pylist())
    else:
        conventions = Counter(row[_CONVENTION_INDEX] for row in rows)
    return NormalizeResult(table, quarantined, skipped, dict(conventions), _links(links))


def _linkable(span: SpanRecord) -> bool:
    """A non-LLM span that could lie between two LLM spans: it has a parent, a kind that nests inside one process,
    well-formed ids and a start time in range (a bad link is dropped, never quarantined: the span is not a call)."""
    parent = span["parent_span_id"]
    return (
        parent is not None
        and span["kind"] in _LINK_KINDS
        and len(span["trace_id"]) == 32
        and _HEX_ID.match(span["span_id"]) is not None
        and _HEX_ID.match(parent) is not None
        and 0 <= span["start_ns"] < 1 << 63
    )


def _links(links: list[tuple[str, str, str, int]]) -> pa.Table | None:
    if not links:
        return None
    trace, span, parent, start = zip(*links, strict=True)
    arrays = [pa.array(trace, pa.string()), pa.array(span, pa.string()), pa.array(parent, pa.string()),
              pa.array(start, pa.int64()).cast(SPAN_LINKS_SCHEMA.field("start_time").type)]  # fmt: skip
    return pa.Table.from_arrays(arrays, schema=SPAN_LINKS_SCHEMA)
