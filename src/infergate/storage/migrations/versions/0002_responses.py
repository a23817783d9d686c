"""Stored responses, their items and conversations (issue 10).

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_uuid", sa.String(36), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("previous_response_id", sa.String(64), nullable=True),
        sa.Column("conversation_id", sa.String(64), nullable=True),
        sa.Column("background", sa.Boolean, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_responses_expires", "responses", ["expires_ms"])
    op.create_index("ix_responses_status", "responses", ["background", "status"])
    op.create_table(
        "response_items",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("response_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("item", sa.Text, nullable=False),
    )
    op.create_index("ix_response_items_response", "response_items", ["response_id", "kind", "id"])
    op.create_table(
        "response_events",
        sa.Column("response_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("event", sa.Text, nullable=False),
    )
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_uuid", sa.String(36), nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_conversations_expires", "conversations", ["expires_ms"])
    op.create_table(
        "conversation_items",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("response_id", sa.String(64), nullable=True),
        sa.Column("item", sa.Text, nullable=False),
    )
    op.create_index("ix_conversation_items_conv", "conversation_items", ["conversation_id", "id"])
    op.create_index("ix_conversation_items_response", "conversation_items", ["response_id"])


def downgrade() -> None:
    op.drop_table("conversation_items")
    op.drop_table("conversations")
    op.drop_table("response_events")
    op.drop_table("response_items")
    op.drop_table("responses")
