"""Service state: API keys, job runs, alert destinations and rules, the alert outbox.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_T = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("scopes", sa.String, nullable=False),
        sa.Column("key_hash", sa.String, nullable=False),
        sa.Column("created_at", _T, nullable=False),
        sa.Column("last_used_at", _T),
        sa.Column("revoked_at", _T),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )
    op.create_table(
        "job_runs",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("trigger", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("queued_at", _T, nullable=False),
        sa.Column("started_at", _T),
        sa.Column("finished_at", _T),
        sa.Column("window_start", _T),
        sa.Column("window_end", _T),
        sa.Column("counts", sa.Text, nullable=False, server_default="{}"),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_job_runs"),
    )
    op.create_table(
        "alert_destinations",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
        sa.Column("secret", sa.Text, nullable=False, server_default="{}"),
        sa.Column("origin", sa.String, nullable=False, server_default="api"),
        sa.Column("created_at", _T, nullable=False),
        sa.Column("updated_at", _T, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_destinations"),
    )
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("destination_id", sa.String, nullable=False),
        sa.Column("series", sa.Text, nullable=False, server_default="{}"),
        sa.Column("labels", sa.Text, nullable=False, server_default="[]"),
        sa.Column("min_change_pct", sa.Double, nullable=False, server_default="0"),
        sa.Column("min_confidence", sa.Double, nullable=False, server_default="0"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default="true"),
        sa.Column("origin", sa.String, nullable=False, server_default="api"),
        sa.Column("created_at", _T, nullable=False),
        sa.Column("updated_at", _T, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_rules"),
    )
    op.create_table(
        "alert_outbox",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("regression_id", sa.String, nullable=False),
        sa.Column("destination_id", sa.String, nullable=False),
        sa.Column("rule_id", sa.String),
        sa.Column("event", sa.String, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", _T, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", _T, nullable=False),
        sa.Column("sent_at", _T),
        sa.PrimaryKeyConstraint("id", name="pk_alert_outbox"),
        sa.UniqueConstraint("regression_id", "destination_id", "event", name="uq_alert_outbox_regression_id"),
    )


def downgrade() -> None:
    for table in ("alert_outbox", "alert_rules", "alert_destinations", "job_runs", "api_keys"):
        op.drop_table(table)
