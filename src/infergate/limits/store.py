"""Key limits in the database (table `key_limits`, migration 0004) and this month's spend from the ledger."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Engine, Integer, String, Table, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from infergate.limits.model import KeyLimits
from infergate.storage.db import metadata, usage_records
from infergate.storage.keys import utcnow

key_limits = Table(
    "key_limits",
    metadata,
    Column("key_uuid", String(36), primary_key=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("max_concurrency", Integer, nullable=True),
    Column("monthly_budget_nano_usd", BigInteger, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


def _limits(row) -> KeyLimits:  # type: ignore[no-untyped-def]
    return KeyLimits.from_nano(row.rpm, row.tpm, row.max_concurrency, row.monthly_budget_nano_usd)


class LimitsRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def all(self) -> dict[str, KeyLimits]:
        """Every key with a limit (small: one row per limited key), read at once for the hot path."""
        with self.engine.connect() as conn:
            return {row.key_uuid: _limits(row) for row in conn.execute(select(key_limits))}

    def get(self, key_uuid: str) -> KeyLimits:
        with self.engine.connect() as conn:
            row = conn.execute(select(key_limits).where(key_limits.c.key_uuid == key_uuid)).first()
        return _limits(row) if row else KeyLimits()

    def set(self, key_uuid: str, limits: KeyLimits) -> None:
        """Store the limits (no row at all for a key without any)."""
        with self.engine.begin() as conn:
            if limits.unlimited:
                conn.execute(delete(key_limits).where(key_limits.c.key_uuid == key_uuid))
                return
            values = {
                "key_uuid": key_uuid,
                "rpm": limits.rpm,
                "tpm": limits.tpm,
                "max_concurrency": limits.max_concurrency,
                "monthly_budget_nano_usd": limits.budget_nano,
                "updated_at": utcnow(),
            }
            make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = make(key_limits).values(**values)
            stmt = stmt.on_conflict_do_update(
                index_elements=["key_uuid"], set_={k: stmt.excluded[k] for k in values if k != "key_uuid"}
            )
            conn.execute(stmt)

    def month_cost_nano(self, key_uuid: str, since_ms: int) -> int:
        """The key's settled cost since `since_ms` (the month's start), as the ledger has it now."""
        u = usage_records
        with self.engine.connect() as conn:
            total = conn.execute(
                select(func.coalesce(func.sum(u.c.cost_nano_usd), 0)).where(
                    u.c.key_uuid == key_uuid, u.c.created_ms >= since_ms
                )
            ).scalar_one()
        return int(total)
