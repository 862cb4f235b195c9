"""Attribution workers' nightly pass: ``shard_leases.nightly_slot``, the nightly slot (the nightly cron's firing time)
a shard was last re-detected for, so across N workers each shard's nightly runs once per slot.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("shard_leases", sa.Column("nightly_slot", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("shard_leases", "nightly_slot")
