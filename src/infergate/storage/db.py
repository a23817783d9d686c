"""Tables and the database engine: SQLite (WAL) by default, PostgreSQL when configured.

Schema changes are Alembic migrations (storage/migrations); `open_database` brings any database
to head before use, under a lock so several replicas starting together migrate once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    text,
)

metadata = MetaData()
# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for a big ledger.
BigId = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("secret_prefix", String(32), nullable=False),
    Column("created_by", String(255), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("key_uuid", String(36), nullable=True),
    Column("model", String(200), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cache_read_tokens", Integer, nullable=False, default=0),
    Column("cache_write_5m_tokens", Integer, nullable=False, default=0),
    Column("cache_write_1h_tokens", Integer, nullable=False, default=0),
    Column("cost_nano_usd", BigInteger, nullable=False, default=0),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("estimated", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_usage_created_ms", "created_ms"),
    Index("ix_usage_key_created", "key_uuid", "created_ms"),
)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # connect_timeout: an unreachable database fails a write (kept for retry), it never hangs it
    return create_engine(
        url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args={"connect_timeout": 10}
    )


@contextlib.contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """Processes starting together on one SQLite file migrate one at a time (a file lock beside it);
    `infergate serve --workers N` also migrates once in the parent, before forking."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def migrate(engine: Engine) -> None:
    """Upgrade the schema to head; PostgreSQL takes an advisory lock so replicas don't race."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with _sqlite_migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(74657201)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> Engine:
    engine = create_db_engine(url)
    migrate(engine)
    return engine
