"""The usage ledger table: idempotent batch inserts and grouped reports."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Engine, case, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from infergate.storage.db import api_keys, usage_records

GroupBy = Literal["key", "model", "day"]
DAY_MS = 86_400_000


class LedgerRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert rows, ignoring request ids already present (a retried batch counts once)."""
        if not rows:
            return
        dialect = self.engine.dialect.name
        make = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = make(usage_records).on_conflict_do_nothing(index_elements=["request_id"])
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    def report(self, start_ms: int, end_ms: int, group_by: GroupBy) -> list[dict[str, Any]]:
        u = usage_records
        if group_by == "key":
            group = u.c.key_uuid
        elif group_by == "model":
            group = u.c.model
        else:
            group = u.c.created_ms // DAY_MS  # SQLAlchemy renders integer floor division per dialect
        columns = [
            group.label("group"),
            func.count().label("requests"),
            func.coalesce(func.sum(u.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(u.c.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(u.c.cache_read_tokens), 0).label("cache_read_tokens"),
            func.coalesce(func.sum(u.c.cache_write_5m_tokens), 0).label("cache_write_5m_tokens"),
            func.coalesce(func.sum(u.c.cache_write_1h_tokens), 0).label("cache_write_1h_tokens"),
            func.coalesce(func.sum(u.c.cost_nano_usd), 0).label("cost_nano_usd"),
            func.coalesce(func.sum(case((u.c.estimated, 1), else_=0)), 0).label("estimated_requests"),
            func.coalesce(func.sum(case((u.c.status >= 400, 1), else_=0)), 0).label("failed_requests"),
        ]
        stmt = (
            select(*columns)
            .where(u.c.created_ms >= start_ms, u.c.created_ms < end_ms)
            .group_by(group)
            .order_by(group)
        )
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(stmt)]
            names = {}
            if group_by == "key":
                names = dict(conn.execute(select(api_keys.c.uuid, api_keys.c.name)).all())
        for row in rows:
            for name in list(row):
                if name != "group" and row[name] is not None:
                    row[name] = int(row[name])
            if group_by == "day":
                row["group"] = int(row["group"]) * DAY_MS
            elif group_by == "key":
                row["key_name"] = names.get(row["group"])
        return rows
