"""Where an LLM call went: endpoint host and port, provider from the host, region and deployment.

Region and deployment are routing dimensions (DESIGN.md): a shift among them inside a series is the routing
signal, so they are read from explicit attributes first and otherwise parsed from the endpoint with the
well-known Azure / Bedrock / Vertex URL shapes (CONVENTIONS.md §5, §7). String methods only: URL parsing
runs for every span that carries a URL, and ``urllib.parse`` or a regex would cost more than the rest of the row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from spanprism.ingest.coerce import as_str, first_str

#: server_address fallbacks after ``server.address``: URLs whose host is the LLM endpoint.
URL_KEYS: tuple[str, ...] = ("gen_ai.openai.api_base", "url.full", "http.url")
#: Captured response headers (semconv ``http.response.header.<name>``, values are string[]).
REGION_HEADER = "http.response.header.x-ms-region"
DEPLOYMENT_HEADER = "http.response.header.x-ms-deployment-name"

#: Exact hosts of first-party APIs → current semconv provider value.
_EXACT_HOSTS: dict[str, str] = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral_ai",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "x_ai",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
    "api.perplexity.ai": "perplexity",
    "api.moonshot.ai": "moonshot_ai",
    "api.moonshot.cn": "moonshot_ai",
    "generativelanguage.googleapis.com": "gcp.gemini",
    "api.together.xyz": "together",
    "api.fireworks.ai": "fireworks",
    "api.cerebras.ai": "cerebras",
}
#: Host suffixes → provider (checked after the exact table; order matters: most specific first).
_SUFFIX_HOSTS: tuple[tuple[str, str], ...] = (
    (".openai.azure.com", "azure.ai.openai"),
    (".cognitiveservices.azure.com", "azure.ai.openai"),
    (".services.ai.azure.com", "azure.ai.inference"),
    (".models.ai.azure.com", "azure.ai.inference"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
)


class Endpoint(NamedTuple):
    """The endpoint facts of one span."""

    server_address: str | None
    server_port: int | None
    url: str | None


def split_host(url: str) -> tuple[str | None, int | None]:
    """Host (lowercase) and explicit port of a URL or bare ``host[:port]``; (None, None) when there is none."""
    start = url.find("://")
    rest = url[start + 3 :] if start >= 0 else url
    for sep in "/?#":
        cut = rest.find(sep)
        if cut >= 0:
            rest = rest[:cut]
    rest = rest.rpartition("@")[2]
    port: int | None = None
    if rest.startswith("["):  # IPv6 literal
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":") and tail[1:].isdigit():
            port = int(tail[1:])
    else:
        host, colon, tail = rest.partition(":")
        if colon and tail.isdigit():
            port = int(tail)
    host = host.lower()
    return (host or None), port


def endpoint(attrs: Mapping[str, Any], *, has_url: bool = True) -> Endpoint:
    """``server.address`` (+``server.port``), else the host of the first URL attribute (§7 server_address).

    ``has_url=False`` is the caller's promise that no ``URL_KEYS`` attribute is present (skips the probes).
    """
    url = first_str(attrs, URL_KEYS) if has_url else None
    address = attrs.get("server.address")
    if isinstance(address, str) and address:
        if "/" in address or ":" in address or "@" in address:
            host, port = split_host(address)
        else:  # the usual bare host name: skip the URL parser
            host, port = address.lower(), None
        explicit = attrs.get("server.port")
        if isinstance(explicit, str) and explicit.isdigit():
            explicit = int(explicit)
        if isinstance(explicit, int) and not isinstance(explicit, bool):
            port = explicit
        return Endpoint(host, port, url)
    if url:
        host, port = split_host(url)
        return Endpoint(host, port, url)
    return Endpoint(None, None, None)


def provider_from_host(host: str | None) -> str | None:
    """The provider implied by a well-known endpoint host, else None."""
    if not host:
        return None
    exact = _EXACT_HOSTS.get(host)
    if exact is not None:
        return exact
    if host.startswith(("bedrock-runtime.", "bedrock-runtime-fips.")) and host.endswith(".amazonaws.com"):
        return "aws.bedrock"
    for suffix, provider in _SUFFIX_HOSTS:
        if host.endswith(suffix):
            return provider
    return None


def region_from_host(host: str | None) -> str | None:
    """Region in a Bedrock (``bedrock-runtime[-fips].{r}.amazonaws.com``) or Vertex (``{r}-aiplatform…``) host."""
    if not host:
        return None
    if host.startswith(("bedrock-runtime.", "bedrock-runtime-fips.")) and host.endswith(".amazonaws.com"):
        parts = host.split(".")
        return parts[1] if len(parts) >= 4 else None
    if host.endswith("-aiplatform.googleapis.com"):
        return host[: -len("-aiplatform.googleapis.com")] or None
    return None


def _path_segment_after(url: str, marker: str) -> str | None:
    """The path segment following ``marker`` (e.g. ``/deployments/``) in ``url``, else None."""
    at = url.find(marker)
    if at < 0:
        return None
    rest = url[at + len(marker) :]
    for sep in "/?#:":
        cut = rest.find(sep)
        if cut >= 0:
            rest = rest[:cut]
    return rest or None


def region(attrs: Mapping[str, Any], resource: Mapping[str, Any], ep: Endpoint) -> str | None:
    """Region of the LLM endpoint: span ``cloud.region`` · ``x-ms-region`` header · host · Vertex URL · ``aws.region``.

    A *resource* ``cloud.region`` is deliberately ignored (a departure from CONVENTIONS §7's order): it says where the
    application runs, not where the provider served the call, and would mask a real region shift behind the host.
    """
    for value in (attrs.get("cloud.region"), attrs.get(REGION_HEADER)):
        if value is not None:
            text = as_str(value)
            if text and text.strip():
                return text.strip()
    host = ep.server_address
    if host is not None and (host.endswith(".amazonaws.com") or host.endswith("aiplatform.googleapis.com")):
        parsed = region_from_host(host)
        if parsed:
            return parsed
    if ep.url is not None and "aiplatform.googleapis.com" in ep.url:
        location = _path_segment_after(ep.url, "/locations/")
        if location:
            return location
    value = attrs.get("aws.region")
    return as_str(value) if value is not None else None


def deployment(attrs: Mapping[str, Any]) -> str | None:
    """Azure deployment from the ``/openai/deployments/{d}/`` path of any URL attribute, else the header.

    ``deployment.environment*`` is deliberately not used: it names an environment (prod, staging), not a model
    deployment, and treating it as one would make an environment split look like a routing change.
    """
    for key in URL_KEYS:
        candidate = attrs.get(key)
        if type(candidate) is str and "/deployments/" in candidate:
            found = _path_segment_after(candidate, "/deployments/")
            if found:
                return found
    header = attrs.get(DEPLOYMENT_HEADER)
    return as_str(header) if header is not None else None
