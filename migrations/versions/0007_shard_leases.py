"""Attribution workers: ``shard_leases`` (who holds which hash shard of the series keys, until when, and how far its
last pass got) and the cross-shard context a stored attribution was computed with.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_T = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "shard_leases",
        sa.Column("shard", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("owner", sa.String),
        sa.Column("token", sa.String),
        sa.Column("expires_at", _T),
        sa.Column("last_started_at", _T),
        sa.Column("last_finished_at", _T),
        sa.Column("covered_until", _T),
        sa.Column("passes", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("shard", name="pk_shard_leases"),
    )
    # How many other series of the provider had regressed when the label was computed (the classifier's context):
    # a regression labelled before another shard stored its peers is labelled again once that count moves.
    op.add_column("regression_attributions", sa.Column("peers_regressed", sa.BigInteger))


def downgrade() -> None:
    op.drop_column("regression_attributions", "peers_regressed")
    op.drop_table("shard_leases")
