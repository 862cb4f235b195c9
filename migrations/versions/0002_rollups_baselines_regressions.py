"""Rollups, baselines, episodes and regressions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from spanprism.migrations.dialect import holds_data

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_S, _F, _I, _N, _X, _T = sa.String, sa.Double, sa.BigInteger, sa.Integer, sa.Text, sa.DateTime(timezone=True)

# Frozen copy of the rollup metric columns at this revision (migrations never import application code).
_ROLLUP_METRICS = [
    "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms", "e2e_gmean_ms",
    "ttft_p50_ms", "ttft_p95_ms", "ttft_gmean_ms",
    "itl_p50_ms", "itl_p95_ms", "itl_gmean_ms",
    "queue_p95_ms",
    "input_tokens_p50", "input_tokens_p95", "uncached_input_tokens_p50", "uncached_input_tokens_p95",
    "cache_read_tokens_p50", "cache_read_tokens_p95", "output_tokens_p50", "output_tokens_p95",
    "cache_read_ratio", "cache_hit_rate",
]  # fmt: skip


def _col(name: str, typ, nullable: bool = True, **kw) -> sa.Column:
    return sa.Column(name, typ() if isinstance(typ, type) else typ, nullable=nullable, **kw)


def upgrade() -> None:
    if holds_data():  # series and rollups live with the calls; baselines, episodes and regressions are state
        _create_data_tables()
    _create_state_tables()


def _create_data_tables() -> None:
    op.create_table(
        "series",
        _col("series_key", _S, False), _col("service", _S), _col("provider", _S), _col("request_model", _S),
        _col("operation", _S), _col("tenant", _S), _col("first_bucket", _T), _col("last_bucket", _T),
        sa.PrimaryKeyConstraint("series_key", name="pk_series"),
    )  # fmt: skip
    op.create_table(
        "series_rollups",
        _col("series_key", _S, False), _col("grain_s", _N, False), _col("bucket_start", _T, False),
        _col("n_calls", _I, False), _col("n_errors", _I, False), _col("error_rate", _F),
        _col("n_ttft", _I, False), _col("n_itl", _I, False), _col("n_queue", _I, False),
        _col("n_cache_reported", _I, False), _col("n_cache_eligible", _I, False),
        *[_col(name, _F) for name in _ROLLUP_METRICS],
        sa.PrimaryKeyConstraint("series_key", "grain_s", "bucket_start", name="pk_series_rollups"),
    )  # fmt: skip
    op.create_table(
        "rollup_dimensions",
        _col("series_key", _S, False), _col("grain_s", _N, False), _col("bucket_start", _T, False),
        _col("dimension", _S, False), _col("value", _S, False), _col("n_calls", _I, False),
        sa.PrimaryKeyConstraint("series_key", "grain_s", "bucket_start", "dimension", "value",
                                name="pk_rollup_dimensions"),
    )  # fmt: skip
    op.create_table(
        "rollup_batches",
        _col("ingest_batch", _S, False), _col("min_start", _T), _col("max_start", _T),
        _col("rolled_up_at", _T, False),
        sa.PrimaryKeyConstraint("ingest_batch", name="pk_rollup_batches"),
    )  # fmt: skip


def _create_state_tables() -> None:
    op.create_table(
        "baselines",
        _col("series_key", _S, False), _col("metric", _S, False), _col("kind", _S, False),
        _col("version", _N, False), _col("grain_s", _N, False), _col("fitted_until", _T, False),
        _col("params", _X, False), _col("updated_at", _T, False),
        sa.PrimaryKeyConstraint("series_key", "metric", name="pk_baselines"),
    )  # fmt: skip
    op.create_table(
        "episodes",
        _col("id", _S, False), _col("regression_id", _S, False), _col("series_key", _S, False),
        _col("family", _S, False), _col("metric", _S, False), _col("grain_s", _N, False),
        _col("start_time", _T, False), _col("detected_at", _T, False), _col("peak_time", _T, False),
        _col("end_time", _T), _col("status", _S, False), _col("baseline", _F), _col("observed", _F),
        _col("change_pct", _F), _col("peak_change_pct", _F), _col("n_buckets", _N, False),
        _col("stats", _X, False, server_default="{}"), _col("updated_at", _T, False),
        sa.PrimaryKeyConstraint("id", name="pk_episodes"),
    )  # fmt: skip
    op.create_table(
        "regressions",
        _col("id", _S, False), _col("series_key", _S, False), _col("service", _S), _col("provider", _S),
        _col("request_model", _S), _col("operation", _S), _col("tenant", _S),
        _col("start_time", _T, False), _col("detected_at", _T, False), _col("end_time", _T),
        _col("status", _S, False), _col("metric", _S, False), _col("baseline", _F), _col("observed", _F),
        _col("change_pct", _F), _col("metrics", _X, False, server_default="[]"), _col("updated_at", _T, False),
        sa.PrimaryKeyConstraint("id", name="pk_regressions"),
    )  # fmt: skip


def downgrade() -> None:
    for name in ("regressions", "episodes", "baselines"):
        op.drop_table(name)
    if holds_data():
        for name in ("rollup_batches", "rollup_dimensions", "series_rollups", "series"):
            op.drop_table(name)
