"""SQLAlchemy tables of the spanprism data model (DuckDB through duckdb_engine).

The Alembic migrations in ``migrations/`` create exactly these; a test compares them. ``llm_calls`` mirrors
:data:`spanprism.models.schema.LLM_CALLS_SCHEMA` column for column.
"""

from __future__ import annotations

import pyarrow as pa
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeEngine

from spanprism.models.schema import LLM_CALLS_SCHEMA

# A constraint naming convention from day one keeps migrations reproducible.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


def _sql_type(typ: pa.DataType) -> TypeEngine:
    if pa.types.is_string(typ):
        return String()
    if pa.types.is_timestamp(typ):
        return DateTime(timezone=True)
    if pa.types.is_float64(typ):
        return Double()
    if pa.types.is_int64(typ):
        return BigInteger()
    if pa.types.is_int32(typ):
        return Integer()
    if pa.types.is_boolean(typ):
        return Boolean()
    raise TypeError(f"no SQL type for {typ}")


llm_calls = Table(
    "llm_calls",
    metadata,
    *[
        Column(f.name, _sql_type(f.type), nullable=f.name not in ("trace_id", "span_id", "start_time"))
        for f in LLM_CALLS_SCHEMA
    ],
    PrimaryKeyConstraint("trace_id", "span_id"),
)

#: Spans folded into a multi-span call, each with its own canonical row (``ingest/merge.py``): nothing merged is lost.
llm_call_spans = Table(
    "llm_call_spans",
    metadata,
    *[
        Column(f.name, _sql_type(f.type), nullable=f.name not in ("trace_id", "span_id", "start_time"))
        for f in LLM_CALLS_SCHEMA
        if f.name != "merged_span_ids"
    ],
    Column("call_trace_id", String, nullable=False),
    Column("call_span_id", String, nullable=False),
    PrimaryKeyConstraint("trace_id", "span_id"),
)

#: Parent links of the non-LLM spans that may lie between two LLM spans of one call (``schema.SPAN_LINKS_SCHEMA``).
span_links = Table(
    "span_links",
    metadata,
    Column("trace_id", String, nullable=False),
    Column("span_id", String, nullable=False),
    Column("parent_span_id", String, nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("trace_id", "span_id"),
)

ingest_batches = Table(
    "ingest_batches",
    metadata,
    Column("id", String, primary_key=True),
    Column("source", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("spans_seen", BigInteger, nullable=False, server_default="0"),
    Column("calls_stored", BigInteger, nullable=False, server_default="0"),
    Column("duplicates", BigInteger, nullable=False, server_default="0"),
    Column("non_llm_skipped", BigInteger, nullable=False, server_default="0"),
    Column("quarantined", BigInteger, nullable=False, server_default="0"),
    Column("conventions", Text, nullable=False, server_default="{}"),  # JSON object convention -> count
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String, primary_key=True),
    Column("ingest_batch", String, nullable=False),
    Column("source", Text, nullable=False),  # file path, "stdin" or "http:<request id>"
    Column("location", Text),  # "line 12", "byte 4096", "record 3 span 2"
    Column("reason", Text, nullable=False),
    Column("raw", LargeBinary),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("redriven_at", DateTime(timezone=True)),
)

# --- Baselines and regression detection (attribution/rollups.py, attribution/store.py) -------------------------
# A series key is a short hash of the configured series columns (service, provider, request_model, operation
# [, tenant]); ``series`` maps it back to readable names. Times are bucket starts (UTC).

series = Table(
    "series",
    metadata,
    Column("series_key", String, primary_key=True),
    Column("service", String),
    Column("provider", String),
    Column("request_model", String),
    Column("operation", String),
    Column("tenant", String),  # NULL unless tenant is one of the configured series columns
    Column("first_bucket", DateTime(timezone=True)),
    Column("last_bucket", DateTime(timezone=True)),
)

#: Latency, token and cache aggregates per series and time bucket, at one or more grains (seconds).
#: Only ``n_*`` counts add up across buckets; quantiles of a coarser grain are computed from the calls.
ROLLUP_METRICS = (
    "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms", "e2e_gmean_ms",
    "ttft_p50_ms", "ttft_p95_ms", "ttft_gmean_ms",
    "itl_p50_ms", "itl_p95_ms", "itl_gmean_ms",
    "queue_p95_ms",
    "input_tokens_p50", "input_tokens_p95", "uncached_input_tokens_p50", "uncached_input_tokens_p95",
    "cache_read_tokens_p50", "cache_read_tokens_p95", "output_tokens_p50", "output_tokens_p95",
    "cache_read_ratio", "cache_hit_rate",
)  # fmt: skip
series_rollups = Table(
    "series_rollups",
    metadata,
    Column("series_key", String, nullable=False),
    Column("grain_s", Integer, nullable=False),
    Column("bucket_start", DateTime(timezone=True), nullable=False),
    Column("n_calls", BigInteger, nullable=False),
    Column("n_errors", BigInteger, nullable=False),
    Column("error_rate", Double),
    Column("n_ttft", BigInteger, nullable=False),
    Column("n_itl", BigInteger, nullable=False),
    Column("n_queue", BigInteger, nullable=False),
    Column("n_cache_reported", BigInteger, nullable=False),
    Column("n_cache_eligible", BigInteger, nullable=False),
    *[Column(name, Double) for name in ROLLUP_METRICS],
    PrimaryKeyConstraint("series_key", "grain_s", "bucket_start"),
)

#: Route mix inside a series: calls per (bucket, dimension, value) at the base grain. Counts (not shares) so a
#: coarser window's mix is a plain sum. ``value`` is '' when the call did not report the dimension.
rollup_dimensions = Table(
    "rollup_dimensions",
    metadata,
    Column("series_key", String, nullable=False),
    Column("grain_s", Integer, nullable=False),
    Column("bucket_start", DateTime(timezone=True), nullable=False),
    Column("dimension", String, nullable=False),  # region|server_address|deployment|response_model|system_fingerprint
    Column("value", String, nullable=False),
    Column("n_calls", BigInteger, nullable=False),
    PrimaryKeyConstraint("series_key", "grain_s", "bucket_start", "dimension", "value"),
)

#: Ingest batches whose calls are already in the rollups (the incremental refresh recomputes the rest).
rollup_batches = Table(
    "rollup_batches",
    metadata,
    Column("ingest_batch", String, primary_key=True),
    Column("min_start", DateTime(timezone=True)),
    Column("max_start", DateTime(timezone=True)),
    Column("rolled_up_at", DateTime(timezone=True), nullable=False),
)

#: A ``spanprism worker``'s rollup cache, per shard (revision 0009): the rollups of a shard's series are fresh up to
#: ``fresh_until`` (data time), and ingest batches written before ``refreshed_at`` are in them. Only the worker's own
#: DuckDB file fills it: each worker caches the rollups of the shards it passes, not of every series.
shard_rollups = Table(
    "shard_rollups",
    metadata,
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("fresh_until", DateTime(timezone=True), nullable=False),
    Column("refreshed_at", DateTime(timezone=True), nullable=False),
)

#: The latest fitted baseline per series and metric: plain JSON parameters beside kind and version.
baselines = Table(
    "baselines",
    metadata,
    Column("series_key", String, nullable=False),
    Column("metric", String, nullable=False),
    Column("kind", String, nullable=False),
    Column("version", Integer, nullable=False),
    Column("grain_s", Integer, nullable=False),
    Column("fitted_until", DateTime(timezone=True), nullable=False),
    Column("params", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("series_key", "metric"),
)

#: One anomalous stretch of one metric family (e2e, ttft, itl) of one series.
episodes = Table(
    "episodes",
    metadata,
    Column("id", String, primary_key=True),
    Column("regression_id", String, nullable=False),
    Column("series_key", String, nullable=False),
    Column("family", String, nullable=False),
    Column("metric", String, nullable=False),
    Column("grain_s", Integer, nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False),
    Column("peak_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True)),
    Column("status", String, nullable=False),
    Column("baseline", Double),
    Column("observed", Double),
    Column("change_pct", Double),
    Column("peak_change_pct", Double),
    Column("n_buckets", Integer, nullable=False),
    Column("stats", Text, nullable=False, server_default="{}"),  # JSON: stat -> {baseline, observed, change_pct}
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: One regression per series and time span: the episodes of its metric families merged, primary = largest change.
#: Attribution (label, contributions, evidence, exemplars) is kept elsewhere and merged by attribution/records.py.
regressions = Table(
    "regressions",
    metadata,
    Column("id", String, primary_key=True),
    Column("series_key", String, nullable=False),
    Column("service", String),
    Column("provider", String),
    Column("request_model", String),
    Column("operation", String),
    Column("tenant", String),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True)),
    Column("status", String, nullable=False),
    Column("metric", String, nullable=False),
    Column("baseline", Double),
    Column("observed", Double),
    Column("change_pct", Double),
    Column("metrics", Text, nullable=False, server_default="[]"),  # JSON list of every metric that moved
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# --- attribution (revision 0003) -------------------------------------------------------------------------------

regression_attributions = Table(
    "regression_attributions",
    metadata,
    Column("regression_id", String, primary_key=True),
    Column("label", String, nullable=False),
    Column("reason", String),
    Column("confidence", Double, nullable=False),
    Column("probabilities", Text, nullable=False, server_default="{}"),  # JSON label -> probability
    Column("contributions_ms", Text, nullable=False, server_default="{}"),  # JSON, DESIGN.md shape
    Column("evidence", Text, nullable=False, server_default="[]"),  # JSON list of {signal, baseline, observed}
    Column("exemplars", Text, nullable=False, server_default="[]"),  # JSON list of {trace_id, span_id}
    Column("model_version", String, nullable=False),
    Column("baseline_calls", BigInteger, nullable=False, server_default="0"),
    Column("episode_calls", BigInteger, nullable=False, server_default="0"),
    Column("attributed_at", DateTime(timezone=True), nullable=False),
    Column("peers_regressed", BigInteger),  # revision 0007: the cross-shard context the label was computed with
)

regression_feedback = Table(
    "regression_feedback",
    metadata,
    Column("id", String, primary_key=True),
    Column("regression_id", String, nullable=False),
    Column("label", String, nullable=False),
    Column("reason", String),
    Column("note", Text),
    Column("features", Text),  # JSON feature dict at the time of the feedback (training input)
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# --- service state (revision 0004): API keys, job runs, alert rules/destinations and the delivery outbox ---------

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String, primary_key=True),  # short public id, also the key's visible prefix
    Column("name", String, nullable=False),
    Column("scopes", String, nullable=False),  # comma-separated subset of ingest,read,admin
    Column("key_hash", String, nullable=False),  # sha256 hex of the full key; the key itself is never stored
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

#: Every attribution pass (incremental, nightly, manual): its window, outcome and counts.
job_runs = Table(
    "job_runs",
    metadata,
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),  # incremental|nightly|manual
    Column("trigger", String, nullable=False),  # scheduler|api|cli|worker
    Column("status", String, nullable=False),  # queued|running|succeeded|failed|skipped|interrupted
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("window_start", DateTime(timezone=True)),  # data window the pass covered (NULL = all stored data)
    Column("window_end", DateTime(timezone=True)),
    Column("counts", Text, nullable=False, server_default="{}"),  # JSON summary of what the pass did
    Column("error", Text),
)

#: Where alerts go. ``secret`` holds the webhook URL / routing key / HMAC secret (JSON) and is never returned.
alert_destinations = Table(
    "alert_destinations",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("kind", String, nullable=False),  # a registered kind: spanprism.api.alerts.kinds.KINDS
    Column("options", Text, nullable=False, server_default="{}"),  # JSON, non-secret settings
    Column("secret", Text, nullable=False, server_default="{}"),  # JSON, secret settings
    Column("origin", String, nullable=False, server_default="api"),  # api|config (TOML config-as-code)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Which regressions alert where.
alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("destination_id", String, nullable=False),
    Column("series", Text, nullable=False, server_default="{}"),  # JSON field -> glob, e.g. {"service": "chat-*"}
    Column("labels", Text, nullable=False, server_default="[]"),  # JSON list; empty = every label
    Column("min_change_pct", Double, nullable=False, server_default="0"),
    Column("min_confidence", Double, nullable=False, server_default="0"),
    Column("enabled", Boolean, nullable=False, server_default="true"),
    Column("origin", String, nullable=False, server_default="api"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: The persisted outbox: one row per (regression, destination, event); the unique key makes alerting exactly-once.
alert_outbox = Table(
    "alert_outbox",
    metadata,
    Column("id", String, primary_key=True),
    Column("regression_id", String, nullable=False),
    Column("destination_id", String, nullable=False),
    Column("rule_id", String),
    Column("event", String, nullable=False),  # trigger|resolve
    Column("payload", Text, nullable=False),  # JSON regression record at enqueue time
    Column("status", String, nullable=False),  # pending|sent|failed|expired
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    UniqueConstraint("regression_id", "destination_id", "event"),
)

# --- attribution workers (revision 0007): one lease row per hash shard of the series keys -------------------------

shard_leases = Table(
    "shard_leases",
    metadata,
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("owner", String),  # the worker holding it (host:pid by default); NULL = free
    Column("token", String),  # this claim's token: a renewal or a write of an older claim matches nothing
    Column("expires_at", DateTime(timezone=True)),
    Column("last_started_at", DateTime(timezone=True)),
    Column("last_finished_at", DateTime(timezone=True)),
    Column("covered_until", DateTime(timezone=True)),  # data end of its last finished pass
    Column("passes", BigInteger, nullable=False, server_default="0"),
    Column("nightly_slot", DateTime(timezone=True)),  # revision 0008: the nightly slot it was last re-detected for
)
