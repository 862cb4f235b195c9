"""Settings, read only at the edges (CLI, server start) from env vars ``SPANPRISM_*`` and an optional TOML file.

Every setting has a default and help text; ``tests/test_docs.py`` fails when one is missing from the README.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from spanprism.ingest.limits import Limits
from spanprism.ingest.otel_traces import Part


class Settings(BaseSettings):
    """spanprism configuration. Env vars win over the TOML file (``SPANPRISM_CONFIG``), which wins over defaults."""

    model_config = SettingsConfigDict(env_prefix="SPANPRISM_", extra="ignore")

    db: Path = Field(Path("spanprism.duckdb"), description="DuckDB file holding calls, baselines and service state.")
    state_url: str | None = Field(
        None,
        description="PostgreSQL URL (`postgresql+psycopg://user:pass@host/db`) for the service state several "
        "`serve` replicas and `worker`s share (API keys, job runs, alert destinations, rules and outbox, shard "
        "leases, and the detection results: baselines, episodes, regressions, attributions, feedback); unset = the "
        "DuckDB file.",
    )
    clickhouse_url: str | None = Field(
        None,
        description="ClickHouse HTTP URL (`http://user:pass@host:8123/database`) that holds `llm_calls` instead of the "
        "DuckDB file (ingest writes Arrow batches there, rollups are computed there); unset = the DuckDB file.",
    )
    clickhouse_source_table: str = Field(
        "otel_traces",
        description="The Collector clickhouseexporter's span table that `spanprism source` follows (in the "
        "`clickhouse_url` database, or `database.table`).",
    )
    clickhouse_source_late_s: int = Field(
        600,
        ge=0,
        description="Late-arrival window of `spanprism source`: each pass re-reads this many seconds before its "
        "watermark, so spans the Collector writes late are still picked up (re-reads change nothing).",
    )
    clickhouse_source_every_s: float = Field(
        0,
        ge=0,
        description="When > 0 (and `clickhouse_url` is set), `serve` follows `clickhouse_source_table` every this "
        "many seconds, as `spanprism source --every` would; 0 = off.",
    )
    clickhouse_source_part: str = Field(
        "0/1",
        description="`I/N`: this follower reads the traces whose id hashes to I of N, so N `spanprism source` "
        "processes (or `serve` replicas) follow one table together, each with its own watermark; `0/1` = all.",
    )
    worker_lease_s: float = Field(
        60,
        gt=0,
        description="Seconds a `spanprism worker` lease on a shard lasts without renewal (renewed every quarter of "
        "it while the worker works): how long a crashed worker's shards wait before another worker takes them.",
    )
    worker_every_s: float = Field(
        300,
        gt=0,
        description="A looping `spanprism worker` passes each shard again when its last pass finished this many "
        "seconds ago (the workers' incremental interval).",
    )
    tenant_attribute: str | None = Field(
        None, description="Span/resource attribute whose value becomes `tenant` (and splits series), e.g. `user.id`."
    )
    ingest_workers: int = Field(
        default_factory=lambda: min(2, os.cpu_count() or 1),
        description="Worker processes that decode and normalize large inputs (the DB writer is always one).",
    )
    chunk_bytes: int = Field(4 << 20, description="Bytes per ingest chunk read and decoded at a time.")
    ingest_batch_rows: int = Field(
        100_000,
        gt=0,
        description="Rows per write transaction of a file ingest or upload (the OTLP writer and the scheduler take "
        "the write lock between two).",
    )
    classifier: Path | None = Field(
        None,
        description="Attribution classifier artifact (JSON) to use instead of the shipped one, e.g. after "
        "`spanprism train --with-feedback --out FILE`.",
    )

    # --- server (`spanprism serve`) ---------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `spanprism serve` listens on (0.0.0.0 for all interfaces).")
    port: int = Field(4318, description="Port of the OTLP/HTTP receiver and the REST API (4318 is the OTLP default).")
    url: str | None = Field(
        None,
        description="URL of a running server; when set, the CLI's `ingest`, `attribute`, `jobs`, `regressions`, "
        "`explain`, `label`, `keys` and `alerts` go through it.",
    )
    api_key: str | None = Field(None, description="API key the CLI sends to `url` (bearer).")
    admin_key: str | None = Field(
        None, description="When set at start, accepted as an admin API key (bootstrap and automation)."
    )
    read_open: bool = Field(
        False, description="Serve read endpoints without a key (a trusted network only); writes always need one."
    )
    otlp_key_header: str = Field(
        "x-spanprism-key", description="Header the OTLP receiver also reads the key from (a Collector's `headers:`)."
    )
    max_body_bytes: int = Field(
        64 << 20, description="Largest accepted OTLP/HTTP or upload body as received, OTLP also after decompression."
    )
    max_decompressed_bytes: int = Field(
        4 << 30,
        gt=0,
        description="Largest size one compressed input (file, upload or OTLP body) may inflate to, checked while "
        "inflating; over it the input is refused (413 over HTTP; an OTLP body is also bounded by `max_body_bytes`).",
    )
    max_records_per_input: int = Field(
        10_000_000, gt=0, description="Most records (lines, length-prefixed records) one input may hold; refused above."
    )
    max_string_chars: int = Field(
        1024, ge=32, description="Longest text value (service, model, ids, names …) one stored call may hold."
    )
    oversize_strings: Literal["truncate", "quarantine"] = Field(
        "truncate", description="What a longer value does: `truncate` (cut, marked `…[truncated]`) or `quarantine`."
    )
    max_span_age_days: float = Field(
        3650.0, gt=0, description="Spans starting longer ago than this are quarantined (implausible timestamps)."
    )
    max_span_future_hours: float = Field(
        24.0, ge=0, description="Spans starting further than this in the future are quarantined (clock skew bound)."
    )
    ready_stall_s: float = Field(
        60.0, gt=0, description="`/readyz` answers 503 when queued spans have waited this long without a commit."
    )
    ingest_queue_spans: int = Field(
        200_000, description="Spans waiting to be written before the OTLP receiver answers 503 with Retry-After."
    )
    hot_reads: bool = Field(
        True,
        description="Answer repeated `GET /api/v1/series` and `/api/v1/regressions` from the route's pre-encoded "
        "answer (same auth, ETag/304, gzip) until the data behind it changes; false sends every request through the "
        "route.",
    )
    max_page_size: int = Field(1000, description="Largest `limit` a list endpoint accepts.")
    max_range_days: int = Field(93, description="Longest time range (days) one read request may ask for.")
    public_url: str | None = Field(
        None,
        description="Base URL of this server as users reach it (links in alerts), e.g. `https://spanprism.example`.",
    )
    session_secret: str | None = Field(
        None,
        description="Secret that signs the web pages' login cookie; unset = a random one per process (logins end "
        "at restart; set the same value on every replica).",
    )
    session_hours: float = Field(12.0, gt=0, description="Hours a web login (session cookie) stays valid.")

    # --- scheduled attribution (api/scheduler.py) ---------------------------------------------------------------
    scheduler_enabled: bool = Field(
        True, description="Run the incremental and nightly attribution passes on a schedule inside `serve`."
    )
    incremental_minutes: float = Field(
        5.0, gt=0, description="Minutes between incremental attribution passes (a pass with no new data is `skipped`)."
    )
    nightly_cron: str = Field(
        "0 2 * * *",
        description="Crontab expression (minute hour day month day-of-week, 0 = Sunday) of the nightly "
        "pass that rebuilds baselines and re-attributes.",
    )
    nightly_timezone: str = Field("UTC", description="IANA time zone the nightly cron expression is read in.")
    nightly_lookback_days: float = Field(
        0.0,
        ge=0,
        description="Days of data (back from the newest call) the nightly pass rebuilds, rollups included; "
        "0 = re-detect all history from the stored rollups (cheaper: rebuilding rollups dominates).",
    )
    misfire_grace_s: int = Field(
        300, gt=0, description="Seconds a scheduled pass may start late (server busy or asleep) before it is dropped."
    )

    # --- alerts (api/alerts/) ---------------------------------------------------------------------------------
    alert_poll_s: float = Field(5.0, description="Seconds between alert outbox polls (new regressions, due retries).")
    alert_timeout_s: float = Field(10.0, description="HTTP timeout (seconds) of one alert delivery attempt.")
    alert_max_age_s: float = Field(
        86400.0, description="Give up on an undelivered alert this many seconds after it was queued (`expired`)."
    )
    alert_backoff_base_s: float = Field(
        2.0, description="First retry delay cap (seconds); doubles per attempt, full jitter, `Retry-After` wins."
    )
    alert_backoff_max_s: float = Field(300.0, description="Largest retry delay cap (seconds) between alert attempts.")
    trace_url_template: str | None = Field(
        None,
        description="Link for exemplar traces in alerts, e.g. `https://tempo.example/trace/{trace_id}` "
        "(`{trace_id}` and `{span_id}` are filled in); a destination's own option wins.",
    )

    @field_validator("clickhouse_source_part")
    @classmethod
    def _source_part(cls, value: str) -> str:
        Part.parse(value)  # a clear error at start, not at every follower turn
        return value

    def ingest_limits(self, *, http: bool = False) -> Limits:
        """The ingest caps and bounds these settings ask for; ``http`` also bounds inflated size by the body cap."""
        inflated = min(self.max_decompressed_bytes, self.max_body_bytes) if http else self.max_decompressed_bytes
        return Limits(max_decompressed_bytes=inflated, max_records=self.max_records_per_input,
                      max_string_chars=self.max_string_chars, oversize_strings=self.oversize_strings,
                      max_age_days=self.max_span_age_days, max_future_hours=self.max_span_future_hours)  # fmt: skip

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("SPANPRISM_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config))
        return tuple(sources)
