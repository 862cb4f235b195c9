"""Chains through non-LLM spans: span_links keeps the parent link of each non-LLM span that may lie between two
LLM spans of one call, so the loader can fold an LLM span into its LLM ancestor whatever the arrival order.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from spanprism.migrations.dialect import holds_data

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not holds_data():  # a state-only database (PostgreSQL) has no span data
        return
    op.create_table(
        "span_links",
        sa.Column("trace_id", sa.String, nullable=False),
        sa.Column("span_id", sa.String, nullable=False),
        sa.Column("parent_span_id", sa.String, nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("trace_id", "span_id", name="pk_span_links"),
    )


def downgrade() -> None:
    if not holds_data():
        return
    op.drop_table("span_links")
