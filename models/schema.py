"""The canonical LLM-call record as one Arrow schema.

One row per LLM call, keyed by ``(trace_id, span_id)``. Column names and meanings are a contract read by
dashboards, alerts and evaluations (DESIGN.md): extend, never rename. Times are UTC microsecond timestamps,
durations DOUBLE milliseconds, tokens integers.
"""

from __future__ import annotations

import pyarrow as pa

UTC_US = pa.timestamp("us", tz="UTC")

#: (name, Arrow type, meaning). The order is the column order of ``llm_calls``.
LLM_CALL_FIELDS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("trace_id", pa.string(), "32 lowercase hex chars"),
    ("span_id", pa.string(), "16 lowercase hex chars"),
    ("parent_span_id", pa.string(), "NULL for a root span"),
    ("response_id", pa.string(), "provider response id, e.g. chatcmpl-…"),
    ("provider_request_id", pa.string(), "request id header or vLLM gen_ai.request.id"),
    ("service", pa.string(), "resource service.name"),
    ("tenant", pa.string(), "from the configured tenant attribute"),
    ("operation", pa.string(), "chat, text_completion, generate_content, …"),
    ("provider", pa.string(), "current semconv provider value, e.g. openai, azure.ai.openai, aws.bedrock"),
    ("request_model", pa.string(), "model asked for"),
    ("response_model", pa.string(), "model that answered (snapshot)"),
    ("system_fingerprint", pa.string(), "OpenAI system_fingerprint"),
    ("server_address", pa.string(), "host of the LLM endpoint"),
    ("region", pa.string(), "explicit attribute, else parsed from the host"),
    ("deployment", pa.string(), "Azure deployment or similar"),
    ("prompt_key", pa.string(), "prompt template/version or prefix hash when the span carries one"),
    ("start_time", UTC_US, "span start, UTC"),
    ("duration_ms", pa.float64(), "end − start"),
    ("ttft_ms", pa.float64(), "time to first token; NULL when not observable"),
    ("decode_ms", pa.float64(), "first token → end"),
    ("itl_ms", pa.float64(), "mean gap between output chunks after the first"),
    ("itl_p95_ms", pa.float64(), "p95 gap, when chunk events exist"),
    ("queue_ms", pa.float64(), "server-side queue time (vLLM)"),
    ("streaming", pa.bool_(), "NULL when unknown"),
    ("status", pa.string(), "'ok' or 'error'"),
    ("error_type", pa.string(), "exception class or error.type"),
    ("finish_reason", pa.string(), "first finish reason"),
    ("input_tokens", pa.int64(), "whole prompt, cached tokens included"),
    ("cache_read_tokens", pa.int64(), "prompt tokens read from the provider cache"),
    ("cache_write_tokens", pa.int64(), "prompt tokens written to the cache"),
    ("uncached_input_tokens", pa.int64(), "input − cache read: what the provider must prefill"),
    ("output_tokens", pa.int64(), "completion tokens, reasoning included"),
    ("reasoning_tokens", pa.int64(), "reasoning subset of output"),
    ("source_convention", pa.string(), "which instrumentation convention the span used"),
    ("ingest_batch", pa.string(), "ingest_batches.id that stored the row"),
    # Extensions beyond the DESIGN.md minimum.
    ("span_name", pa.string(), "the span's name"),
    ("server_port", pa.int32(), "port of the LLM endpoint"),
    ("chunk_count", pa.int32(), "streamed chunk events seen on the span"),
    ("session_id", pa.string(), "conversation / session id"),
    ("merged_span_ids", pa.string(), "JSON array of trace_id:span_id of this call's other spans (llm_call_spans)"),
)

#: ``llm_call_spans``: every span folded into a multi-span call keeps its own row (``llm_calls`` columns without
#: ``merged_span_ids``), keyed by its ids, with the ids of the call row it belongs to.
CALL_SPAN_COLUMNS: tuple[str, ...] = (
    *(name for name, _, _ in LLM_CALL_FIELDS if name != "merged_span_ids"),
    "call_trace_id",
    "call_span_id",
)

#: ``span_links``: the parent link of each non-LLM span that could lie between two LLM spans of one call (a span with
#: a parent, of kind internal, client or unspecified): the loader follows them from an LLM span up to its nearest LLM
#: ancestor (ingest/fold.py), whichever file or request each span arrived in.
SPAN_LINKS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("trace_id", pa.string()),
        pa.field("span_id", pa.string()),
        pa.field("parent_span_id", pa.string()),
        pa.field("start_time", UTC_US),
    ]
)

LLM_CALLS_SCHEMA: pa.Schema = pa.schema([pa.field(name, typ) for name, typ, _ in LLM_CALL_FIELDS])
LLM_CALL_COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in LLM_CALL_FIELDS)

#: A series is (service, provider, request_model, operation); tenant may be added by configuration.
SERIES_COLUMNS: tuple[str, ...] = ("service", "provider", "request_model", "operation")

#: Dimensions inside a series: a shift among them is the routing signal.
ROUTE_COLUMNS: tuple[str, ...] = ("region", "server_address", "deployment", "response_model", "system_fingerprint")

SOURCE_CONVENTIONS: tuple[str, ...] = (
    "otel_semconv",
    "otel_semconv_legacy",
    "openinference",
    "openllmetry",
    "openllmetry_legacy",
    "openlit",
    "langfuse",
    "vercel_ai",
    "vllm",
    "raw_usage",
    "anthropic_sdk",
    "logfire",
    "pydantic_ai",
)


def conform(table: pa.Table) -> pa.Table:
    """Cast/reorder ``table`` to :data:`LLM_CALLS_SCHEMA`, adding missing columns as NULL."""
    if table.schema.equals(LLM_CALLS_SCHEMA):  # what normalize makes: forty casts per write unit saved
        return table
    cols = []
    for field in LLM_CALLS_SCHEMA:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(cols, schema=LLM_CALLS_SCHEMA)
