"""Tables of the durable job queue (same schema as migration 0003_jobs).

`jobs.due_us` is the one column the claim query orders by: for a QUEUED job, when it may run
(now, or later after a retry backoff); for an IN_PROGRESS job, when its lease expires (after
which another worker may take it over). One partial index on it covers both.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, String, Table, Text, text

from infergate.storage.db import BigId, metadata

ACTIVE = text("status IN ('QUEUED', 'IN_PROGRESS')")

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("key_uuid", String(36), nullable=True),
    Column("model_id", String(200), nullable=True),
    Column("status", String(16), nullable=False),
    Column("payload", Text, nullable=False),
    Column("output", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("tags", Text, nullable=True),
    Column("webhook_url", Text, nullable=True),
    Column("webhook_status", String(16), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("lease_token", String(64), nullable=True),
    Column("due_us", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("started_us", BigInteger, nullable=True),
    Column("completed_us", BigInteger, nullable=True),
    Column("updated_us", BigInteger, nullable=False),
    Index("ix_jobs_due", "due_us", postgresql_where=ACTIVE, sqlite_where=ACTIVE),
    Index("ix_jobs_key_created", "key_uuid", "kind", "created_us"),
    Index("ix_jobs_completed", "completed_us"),
)

job_tags = Table(
    "job_tags",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", String(256), primary_key=True),
    Index("ix_job_tags_key_value", "key", "value"),
)

job_deliveries = Table(
    "job_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Index("ix_job_deliveries_job", "job_id"),
)
