"""Per-key limits and budget reservations (issue 11).

One row per key that has a limit; a null column means no limit. The budget is kept in nano-USD,
like the ledger's costs, so comparisons are exact. Reservations are not stored: they live in
Redis (or the process) for the few seconds a request runs.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_limits",
        sa.Column("key_uuid", sa.String(36), primary_key=True),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("tpm", sa.Integer, nullable=True),
        sa.Column("max_concurrency", sa.Integer, nullable=True),
        sa.Column("monthly_budget_nano_usd", sa.BigInteger, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("key_limits")
