"""Durable jobs (async-invoke, background responses), their tags and webhook deliveries (issue 12).

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ACTIVE = sa.text("status IN ('QUEUED', 'IN_PROGRESS')")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("key_uuid", sa.String(36), nullable=True),
        sa.Column("model_id", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("tags", sa.Text, nullable=True),
        sa.Column("webhook_url", sa.Text, nullable=True),
        sa.Column("webhook_status", sa.String(16), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("due_us", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("started_us", sa.BigInteger, nullable=True),
        sa.Column("completed_us", sa.BigInteger, nullable=True),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    # claimable jobs (queued and due, or running with an expired lease) in one range scan
    op.create_index("ix_jobs_due", "jobs", ["due_us"], postgresql_where=ACTIVE, sqlite_where=ACTIVE)
    op.create_index("ix_jobs_key_created", "jobs", ["key_uuid", "kind", "created_us"])
    op.create_index("ix_jobs_completed", "jobs", ["completed_us"])  # the retention sweep
    op.create_table(
        "job_tags",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), primary_key=True),
    )
    op.create_index("ix_job_tags_key_value", "job_tags", ["key", "value"])
    op.create_table(
        "job_deliveries",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=False),
    )
    op.create_index("ix_job_deliveries_job", "job_deliveries", ["job_id"])


def downgrade() -> None:
    op.drop_table("job_deliveries")
    op.drop_table("job_tags")
    op.drop_table("jobs")
