"""SQLAlchemy tables of the spanprism data model (DuckDB through duckdb_engine).

The Alembic migrations in ``migrations/`` create exactly these; a test compares them. ``llm_calls`` mirrors
:data:`models.schema.LLM_CALLS_SCHEMA` column for column.
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
)
from sqlalchemy.types import TypeEngine

from models.schema import LLM_CALLS_SCHEMA

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
