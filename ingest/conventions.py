"""Which spans are LLM calls, which convention they speak, and the key priority tables of CONVENTIONS.md §7.

Every canonical field has a tuple of source keys checked in order (first present wins); the tuples are module
constants so the hot path never builds them. Token keys live in :mod:`spanprism.ingest.tokens`, timing keys in
:mod:`spanprism.ingest.timing`, endpoint keys in :mod:`spanprism.ingest.endpoints`.

Decisions documented here:

* **Embeddings are not LLM calls.** The series contract is about generation latency (TTFT, ITL, decode);
  an embedding call has none of that, so ``gen_ai.operation.name=embeddings``, ``llm.request.type=embedding``
  and ``openinference.span.kind=EMBEDDING`` spans are counted in ``non_llm_skipped`` like HTTP, DB, CHAIN or TOOL.
* An explicit marker decides before token presence: a span whose operation says ``execute_tool`` is skipped
  even if it carries usage keys, and the Vercel AI outer ``ai.streamText`` span (whose inner ``doStream`` span
  is the real call) is skipped so one call is not stored twice.
* ``operation`` keeps ``gen_ai.operation.name`` as written; the OpenLLMetry legacy ``llm.request.type`` values
  map to semconv names (``completion`` → ``text_completion``), and OpenInference ``LLM`` (which does not
  distinguish chat from completion) maps to ``chat``, its overwhelmingly common use. vLLM spans carry no
  operation, so it stays NULL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from spanprism.ingest.coerce import as_bool, as_str, first_str, json_object
from spanprism.ingest.endpoints import provider_from_host

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion", "generate"})
#: Legacy OpenLLMetry ``llm.request.type`` values that are generations, mapped to the semconv operation.
_LEGACY_REQUEST_TYPES = {"chat": "chat", "completion": "text_completion"}
#: Vercel AI SDK operations that are one provider call (the outer ai.generateText/ai.streamText span wraps them).
_VERCEL_CALL_OPERATIONS = frozenset(
    {"ai.generateText.doGenerate", "ai.streamText.doStream", "ai.generateObject.doGenerate", "ai.streamObject.doStream"}
)
#: Any of these makes an otherwise unmarked span an LLM call (§7 "presence of any usage key").
USAGE_PRESENCE_KEYS: frozenset[str] = frozenset(
    {
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.prompt",
        "llm.token_count.completion",
    }
)

PROVIDER_KEYS: tuple[str, ...] = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
REQUEST_MODEL_KEYS: tuple[str, ...] = ("gen_ai.request.model", "llm.request.model_name")
RESPONSE_MODEL_KEYS: tuple[str, ...] = (
    "gen_ai.response.model",
    "llm.response.model_name",
    "llm.model_name",
    "llm.response.model",
)
FINGERPRINT_KEYS: tuple[str, ...] = (
    "openai.response.system_fingerprint",
    "gen_ai.openai.response.system_fingerprint",
    "gen_ai.openai.system_fingerprint",
)
FINISH_KEYS: tuple[str, ...] = (
    "gen_ai.response.finish_reasons",
    "gen_ai.response.finish_reason",
    "llm.response.finish_reason",
    "llm.finish_reason",
)
STREAM_KEYS: tuple[str, ...] = (
    "gen_ai.request.stream",
    "gen_ai.is_streaming",
    "llm.is_streaming",
    "gen_ai.request.is_stream",
)
SESSION_KEYS: tuple[str, ...] = ("session.id", "gen_ai.conversation.id", "langfuse.session.id")
REQUEST_ID_KEYS: tuple[str, ...] = (
    "gen_ai.request.id",
    "anthropic.request.id",  # the Anthropic SDK's own span: the request-id response header
    "aws.request_id",
    "http.response.header.x-request-id",
    "http.response.header.request-id",
    "http.response.header.x-amzn-requestid",
    "http.response.header.apim-request-id",
)

#: Deprecated ``gen_ai.system`` values and other emitters' spellings → current semconv provider values.
_PROVIDER_ALIASES: dict[str, str] = {
    "az.ai.openai": "azure.ai.openai",
    "az.ai.inference": "azure.ai.inference",
    "vertex_ai": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "xai": "x_ai",
    # OpenInference llm.provider / llm.system values.
    "azure": "azure.ai.openai",
    "aws": "aws.bedrock",
    "mistralai": "mistral_ai",
    "vertexai": "gcp.vertex_ai",
    "moonshot": "moonshot_ai",
    # Other spellings seen in OpenLLMetry / OpenLIT / Vercel AI.
    "bedrock": "aws.bedrock",
    "azure_openai": "azure.ai.openai",
    "azure.openai": "azure.ai.openai",
    "mistral": "mistral_ai",
    "watsonx": "ibm.watsonx.ai",
    # Vercel AI SDK writes its provider ids ("openai.chat", "anthropic.messages", …) into gen_ai.system.
    "openai.chat": "openai",
    "openai.responses": "openai",
    "openai.completion": "openai",
    "anthropic.messages": "anthropic",
    "google.generative-ai": "gcp.gemini",
    "google.vertex.chat": "gcp.vertex_ai",
    "amazon-bedrock": "aws.bedrock",
    "azure-openai.chat": "azure.ai.openai",
    "mistral.chat": "mistral_ai",
    "groq.chat": "groq",
    "xai.chat": "x_ai",
    "deepseek.chat": "deepseek",
}


def is_llm_span(name: str, attrs: Mapping[str, Any]) -> bool:
    """§7 is_llm_span: explicit markers decide (positively or negatively), then token-key presence."""
    op = attrs.get("gen_ai.operation.name")
    if op is not None:
        return op in LLM_OPERATIONS
    kind = attrs.get("openinference.span.kind")
    if kind is not None:
        return isinstance(kind, str) and kind.upper() == "LLM"
    request_type = attrs.get("llm.request.type")
    if request_type is not None:
        return request_type in _LEGACY_REQUEST_TYPES
    observation = attrs.get("langfuse.observation.type")
    if observation is not None:
        return observation == "generation"
    vercel = attrs.get("ai.operationId")
    if vercel is not None:
        return vercel in _VERCEL_CALL_OPERATIONS
    if name == "llm_request":  # vLLM server span
        return True
    return not USAGE_PRESENCE_KEYS.isdisjoint(attrs.keys())


def operation(attrs: Mapping[str, Any]) -> str | None:
    """§7 operation: ``gen_ai.operation.name`` · ``llm.request.type`` · ``openinference.span.kind``."""
    op = attrs.get("gen_ai.operation.name")
    if isinstance(op, str):
        return op
    request_type = attrs.get("llm.request.type")
    if isinstance(request_type, str):
        return _LEGACY_REQUEST_TYPES.get(request_type, request_type)
    if attrs.get("openinference.span.kind") is not None:
        return "chat"
    return None


def provider(attrs: Mapping[str, Any], host: str | None) -> str | None:
    """§7 provider, normalized to current semconv values; the host refines generic or missing values.

    The host wins over a generic ``openai`` when it is an Azure OpenAI endpoint (the OpenAI SDK pointed at Azure
    reports ``openai``), and resolves OpenInference's ambiguous ``google`` into Vertex or Gemini.
    """
    raw = first_str(attrs, PROVIDER_KEYS)
    from_host = provider_from_host(host)
    if raw is None:
        return from_host
    value = raw.strip().lower()
    value = _PROVIDER_ALIASES.get(value, value)
    if value == "openai" and from_host == "azure.ai.openai":
        return from_host
    if value == "google":
        return from_host or "gcp.gen_ai"
    return value


def invocation_parameters(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """OpenInference ``llm.invocation_parameters`` (JSON string of the request kwargs), parsed."""
    value = attrs.get("llm.invocation_parameters")
    return json_object(value) if value is not None else None


def request_model(attrs: Mapping[str, Any], params: dict[str, Any] | None) -> str | None:
    """§7 request_model: semconv · ``llm.request.model_name`` · invocation params · Langfuse model name."""
    model = first_str(attrs, REQUEST_MODEL_KEYS)
    if model is None and params is not None:
        model = as_str(params.get("model"))
    return model or as_str(attrs.get("langfuse.observation.model.name"))


def explicit_streaming(attrs: Mapping[str, Any], params: dict[str, Any] | None) -> bool | None:
    """§7 streaming from explicit flags only; None when the span does not say.

    OpenInference's invocation parameters are the request kwargs, so a parsed dict without ``stream`` means a
    non-streaming request (the OpenAI API default).
    """
    for key in STREAM_KEYS:
        value = attrs.get(key)
        if value is not None:
            flag = as_bool(value)
            if flag is not None:
                return flag
    if params is not None:
        return as_bool(params.get("stream", False))
    return None


def finish_reason(attrs: Mapping[str, Any]) -> str | None:
    """§7 finish_reason: the first entry of the array key, else the single-valued keys."""
    for key in FINISH_KEYS:
        value = attrs.get(key)
        if value is None:
            continue
        if isinstance(value, str) and value.startswith("["):
            value = _json_list(value)  # some exporters stringify string[] attributes
        text = as_str(value)
        if text:
            return text
    return None


_PROMPT_NAMES: tuple[tuple[str, str], ...] = (
    ("gen_ai.prompt.name", "gen_ai.prompt.version"),
    ("langfuse.observation.prompt.name", "langfuse.observation.prompt.version"),
    ("traceloop.prompt.key", "traceloop.prompt.version"),
)
#: Every key :func:`prompt_key` reads (lets the caller skip it for spans that carry none).
PROMPT_KEYS: frozenset[str] = frozenset(
    {"spanprism.prompt_key", "llm.prompt_template.template", "llm.prompt_template.version"}
    | {name for name, _ in _PROMPT_NAMES}
)


def _json_list(text: str) -> Any:
    """A JSON-encoded array, parsed; the text itself when it is not one."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return parsed if isinstance(parsed, list) else text


def _with_version(name: Any, version: Any) -> str | None:
    """``name@version`` (or ``name``) for prompt identities."""
    text = as_str(name)
    if not text:
        return None
    suffix = as_str(version)
    return f"{text}@{suffix}" if suffix else text


def prompt_key(attrs: Mapping[str, Any]) -> str | None:
    """The span's prompt identity, first present of:

    ``spanprism.prompt_key`` (explicit) · ``gen_ai.prompt.name``[@``gen_ai.prompt.version``] ·
    ``langfuse.observation.prompt.name``[@version] · ``traceloop.prompt.key``[@``traceloop.prompt.version``] ·
    ``llm.prompt_template.template`` as ``tpl:{sha1[:12]}``[@``llm.prompt_template.version``] ·
    ``llm.prompt_template.version`` alone as ``tpl@{version}``.
    """
    explicit = as_str(attrs.get("spanprism.prompt_key"))
    if explicit:
        return explicit
    for name_key, version_key in _PROMPT_NAMES:
        name = attrs.get(name_key)
        if name is not None:
            key = _with_version(name, attrs.get(version_key))
            if key:
                return key
    template = attrs.get("llm.prompt_template.template")
    version = attrs.get("llm.prompt_template.version")
    if isinstance(template, str) and template:
        digest = hashlib.sha1(template.encode("utf-8"), usedforsecurity=False).hexdigest()[:12]
        return _with_version(f"tpl:{digest}", version)
    if version is not None:
        return _with_version("tpl", version)
    return None


def service(attrs: Mapping[str, Any], resource: Mapping[str, Any]) -> str | None:
    """Resource ``service.name`` · span ``service.name`` (OpenLIT) · resource ``openinference.project.name``."""
    return (
        as_str(resource.get("service.name"))
        or as_str(attrs.get("service.name"))
        or as_str(resource.get("openinference.project.name"))
    )


def tenant(attrs: Mapping[str, Any], resource: Mapping[str, Any], key: str | None) -> str | None:
    """The configured tenant attribute, span first, then resource; None when not configured."""
    if key is None:
        return None
    value = attrs.get(key)
    if value is None:
        value = resource.get(key)
    return as_str(value) if value is not None else None


#: Every key that says something about the emitting library; one C-level set intersection per span.
_MARKER_KEYS: frozenset[str] = frozenset(
    {
        "gen_ai.latency.e2e",
        "gen_ai.latency.time_to_first_token",
        "openinference.span.kind",
        "llm.token_count.prompt",
        "langfuse.observation.type",
        "langfuse.observation.completion_start_time",
        "langfuse.observation.model.name",
        "langfuse.observation.usage_details",
        "ai.operationId",
        "ai.model.id",
        "ai.response.msToFirstChunk",
        "ai.stream.msToFirstChunk",
        "telemetry.sdk.name",
        "gen_ai.server.time_to_first_token",
        "gen_ai.request.is_stream",
        "gen_ai.is_streaming",
        "llm.request.type",
        "llm.is_streaming",
        "llm.usage.total_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.openai.api_base",
        "traceloop.workflow.name",
        "traceloop.entity.name",
        "traceloop.span.kind",
        "gen_ai.system",
        "gen_ai.provider.name",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
        "gen_ai.usage.input_tokens",
    }
)
_PLAIN_OTEL = frozenset(
    {
        "gen_ai.system",
        "gen_ai.provider.name",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
        "gen_ai.usage.input_tokens",
    }
)
_LANGFUSE = frozenset(k for k in _MARKER_KEYS if k.startswith("langfuse."))
_VERCEL = frozenset(k for k in _MARKER_KEYS if k.startswith("ai."))
_OPENLLMETRY_LEGACY = frozenset(
    {"llm.request.type", "llm.is_streaming", "llm.usage.total_tokens", "gen_ai.usage.cache_read_input_tokens"}
)
_OPENLLMETRY_SHARED = frozenset(
    {"gen_ai.openai.api_base", "traceloop.workflow.name", "traceloop.entity.name", "traceloop.span.kind"}
)


#: Instrumentation scopes that name the emitter outright (the span's attributes are plain OTel GenAI).
_SCOPE_CONVENTIONS: dict[str, str] = {
    "com.anthropic.sdk.python": "anthropic_sdk",
    # OpenLLMetry's Anthropic spans of non-streamed calls carry no OpenLLMetry-specific attribute.
    "opentelemetry.instrumentation.anthropic": "openllmetry",
    "pydantic-ai": "pydantic_ai",
}


def scope_convention(scope: str) -> str | None:
    """The convention an instrumentation scope names by itself, else None (decided from the attributes)."""
    if scope.startswith("logfire."):  # logfire.openai, logfire.anthropic, …
        return "logfire"
    return _SCOPE_CONVENTIONS.get(scope)


def source_convention(name: str, attrs: Mapping[str, Any], chunk_event: str | None, tokens_from_raw: bool) -> str:
    """Which convention carried the data (a value of ``SOURCE_CONVENTIONS``), most specific emitter first.

    ``chunk_event`` is the name of the span's per-chunk events, if any (OpenLLMetry's old and new names differ).
    Library-specific markers win; then ``raw_usage`` when the tokens came only from a raw provider payload;
    then plain OTel GenAI, ``_legacy`` when it uses the deprecated ``gen_ai.system`` or prompt/completion names.
    """
    present = _MARKER_KEYS.intersection(attrs.keys())
    if chunk_event is None and present <= _PLAIN_OTEL:  # the common case: no emitter-specific marker at all
        return _otel_flavour(present, tokens_from_raw)
    if name == "llm_request" or "gen_ai.latency.e2e" in present or "gen_ai.latency.time_to_first_token" in present:
        return "vllm"
    if "openinference.span.kind" in present or "llm.token_count.prompt" in present:
        return "openinference"
    if not _LANGFUSE.isdisjoint(present):
        return "langfuse"
    if not _VERCEL.isdisjoint(present):
        return "vercel_ai"
    if (
        "gen_ai.server.time_to_first_token" in present
        or "gen_ai.request.is_stream" in present
        or attrs.get("telemetry.sdk.name") == "openlit"
    ):
        return "openlit"
    if "gen_ai.is_streaming" in present or chunk_event == "gen_ai.content.completion.chunk":
        return "openllmetry"
    if not _OPENLLMETRY_LEGACY.isdisjoint(present) or chunk_event == "llm.content.completion.chunk":
        return "openllmetry_legacy"
    if not _OPENLLMETRY_SHARED.isdisjoint(present):
        return "openllmetry" if "gen_ai.usage.input_tokens" in present else "openllmetry_legacy"
    return _otel_flavour(present, tokens_from_raw)


def _otel_flavour(present: set[str], tokens_from_raw: bool) -> str:
    """``raw_usage`` when only a raw payload had tokens, else OTel GenAI current or deprecated names."""
    if tokens_from_raw:
        return "raw_usage"
    if ("gen_ai.system" in present and "gen_ai.provider.name" not in present) or (
        "gen_ai.usage.prompt_tokens" in present or "gen_ai.usage.completion_tokens" in present
    ):
        return "otel_semconv_legacy"
    return "otel_semconv"
