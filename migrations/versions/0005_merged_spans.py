"""One row per LLM call: llm_calls.merged_span_ids, and llm_call_spans keeping every merged span's own row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from spanprism.migrations.dialect import holds_data

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_S, _F, _I, _B, _T = sa.String, sa.Double, sa.BigInteger, sa.Boolean, sa.DateTime(timezone=True)

# Frozen copy of the llm_calls columns at revision 0001 (migrations never import application code).
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
    if not holds_data():  # a state-only database (PostgreSQL) has no llm_calls
        return
    # JSON array of "trace_id:span_id" of the other spans folded into this call; NULL for a one-span call.
    op.add_column("llm_calls", sa.Column("merged_span_ids", sa.Text, nullable=True))
    op.create_table(
        "llm_call_spans",
        *[sa.Column(name, typ() if isinstance(typ, type) else typ, nullable=null) for name, typ, null in _CALL_COLUMNS],
        sa.Column("call_trace_id", _S, nullable=False),
        sa.Column("call_span_id", _S, nullable=False),
        sa.PrimaryKeyConstraint("trace_id", "span_id", name="pk_llm_call_spans"),
    )


def downgrade() -> None:
    if not holds_data():
        return
    op.drop_table("llm_call_spans")
    op.drop_column("llm_calls", "merged_span_ids")
