"""Settings, read only at the edges (CLI, server start) from env vars ``SPANPRISM_*`` and an optional TOML file.

Every setting has a default and help text; ``tests/test_docs.py`` fails when one is missing from the README.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class Settings(BaseSettings):
    """spanprism configuration. Env vars win over the TOML file (``SPANPRISM_CONFIG``), which wins over defaults."""

    model_config = SettingsConfigDict(env_prefix="SPANPRISM_", extra="ignore")

    db: Path = Field(Path("spanprism.duckdb"), description="DuckDB file holding calls, baselines and service state.")
    tenant_attribute: str | None = Field(
        None, description="Span/resource attribute whose value becomes `tenant` (and splits series), e.g. `user.id`."
    )
    ingest_workers: int = Field(
        default_factory=lambda: min(2, os.cpu_count() or 1),
        description="Worker processes that decode and normalize large inputs (the DB writer is always one).",
    )
    chunk_bytes: int = Field(4 << 20, description="Bytes per ingest chunk read and decoded at a time.")
    classifier: Path | None = Field(
        None, description="Attribution classifier artifact (JSON) to use instead of the shipped one, e.g. after "
        "`spanprism train --with-feedback --out FILE`."
    )

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
