"""Attribution workers' sharded rollup cache: ``shard_rollups`` (per shard, how far a worker's cached rollups of that
shard's series are fresh and when they were refreshed), so a worker refreshes only the rollups of the shards it
claims instead of every series' rollups.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shard_rollups",
        sa.Column("shard", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("fresh_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("shard", name="pk_shard_rollups"),
    )


def downgrade() -> None:
    op.drop_table("shard_rollups")
