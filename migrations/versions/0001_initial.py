"""Initial schema: llm_calls, ingest_batches, quarantine.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from spanprism.migrations.dialect import holds_data

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_S, _F, _I, _B, _T = sa.String, sa.Double, sa.BigInteger, sa.Boolean, sa.DateTime(timezone=True)

# Frozen copy of the llm_calls columns at this revision (migrations never import application code).
_CALL_COLUMNS = [
    ("trace_id", _S, False), ("span_id", _S, False), ("parent_span_id", _S, True),
    ("response_id", _S, True), ("provider_request_id", _S, True), ("service", _S, True),
    ("tenant", _S, True), ("operation", _S, True), ("provider", _S, True),
    ("request_model", _S, True), ("response_model", _S, True), ("system_fingerprint", _S, True),
    ("server_address", _S, True), ("region", _S, True), ("deployment", _S, True),
    ("prompt_key", _S, True), ("start_time", _T, False), ("duration_ms", _F, True),
    ("ttft_ms", _F, True), ("decode_ms", _F, True), ("itl_ms", _F, True), ("itl_p95_ms", _F, True),
    ("queue_ms", _F, True), ("streaming", _B, True), ("status", _S, True), ("error_type", _S, True),
    ("finish_reason", _S, True), ("input_tokens", _I, True), ("cache_read_tokens", _I, True),
    ("cache_write_tokens", _I, True), ("uncached_input_tokens", _I, True), ("output_tokens", _I, True),
    ("reasoning_tokens", _I, True), ("source_convention", _S, True), ("ingest_batch", _S, True),
    ("span_name", _S, True), ("server_port", sa.Integer, True), ("chunk_count", sa.Integer, True),
    ("session_id", _S, True),
]  # fmt: skip


def upgrade() -> None:
    if not holds_data():  # a state-only database (PostgreSQL) holds none of these
        return
    op.create_table(
        "llm_calls",
        *[sa.Column(name, typ() if isinstance(typ, type) else typ, nullable=null) for name, typ, null in _CALL_COLUMNS],
        sa.PrimaryKeyConstraint("trace_id", "span_id", name="pk_llm_calls"),
    )
    op.create_table(
        "ingest_batches",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("started_at", _T, nullable=False),
        sa.Column("finished_at", _T),
        sa.Column("spans_seen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("calls_stored", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("duplicates", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("non_llm_skipped", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("quarantined", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("conventions", sa.Text, nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("id", name="pk_ingest_batches"),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("ingest_batch", sa.String, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("location", sa.Text),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.LargeBinary),
        sa.Column("received_at", _T, nullable=False),
        sa.Column("redriven_at", _T),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )


def downgrade() -> None:
    if not holds_data():
        return
    op.drop_table("quarantine")
    op.drop_table("ingest_batches")
    op.drop_table("llm_calls")
