"""Attribution results per regression and post-mortem feedback.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_T = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "regression_attributions",
        sa.Column("regression_id", sa.String, nullable=False),
        sa.Column("label", sa.String, nullable=False),
        sa.Column("reason", sa.String),
        sa.Column("confidence", sa.Double, nullable=False),
        sa.Column("probabilities", sa.Text, nullable=False, server_default="{}"),
        sa.Column("contributions_ms", sa.Text, nullable=False, server_default="{}"),
        sa.Column("evidence", sa.Text, nullable=False, server_default="[]"),
        sa.Column("exemplars", sa.Text, nullable=False, server_default="[]"),
        sa.Column("model_version", sa.String, nullable=False),
        sa.Column("baseline_calls", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("episode_calls", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("attributed_at", _T, nullable=False),
        sa.PrimaryKeyConstraint("regression_id", name="pk_regression_attributions"),
    )
    op.create_table(
        "regression_feedback",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("regression_id", sa.String, nullable=False),
        sa.Column("label", sa.String, nullable=False),
        sa.Column("reason", sa.String),
        sa.Column("note", sa.Text),
        sa.Column("features", sa.Text),
        sa.Column("created_at", _T, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_regression_feedback"),
    )


def downgrade() -> None:
    op.drop_table("regression_feedback")
    op.drop_table("regression_attributions")
