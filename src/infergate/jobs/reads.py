"""Reading jobs for their owners (the api): one job, a filtered page, a webhook's delivery log.
A key sees its own jobs; the admin token (or internal code passing no key) sees every job."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, and_, or_, select, true, update

from infergate.errors import InvalidRequest
from infergate.jobs.model import Job, now_us
from infergate.jobs.tables import job_deliveries, job_tags, jobs


def visible(key_uuid: str | None, admin: bool) -> Any:
    """Jobs a caller may see: a key its own; the admin token, or internal code passing no key, all.
    (The api passes the calling key's uuid, never None, unless the caller is the admin.)"""
    return true() if admin or key_uuid is None else jobs.c.key_uuid == key_uuid


class JobReads:
    """Mixed into JobQueue: the owner-facing reads and the webhook delivery log."""

    engine: Engine

    async def get(self, job_id: str, key_uuid: str | None = None, *, admin: bool = False) -> Job | None:
        return await asyncio.to_thread(self.get_now, job_id, key_uuid, admin)

    def get_now(self, job_id: str, key_uuid: str | None = None, admin: bool = False) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id, visible(key_uuid, admin))).first()
        return Job.from_row(row) if row is not None else None

    async def list(
        self,
        kind: str,
        key_uuid: str | None = None,
        *,
        admin: bool = False,
        statuses: Sequence[str] = (),
        tags: Sequence[tuple[str, str]] = (),
        model_id: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> tuple[list[Job], bool]:
        """Newest first; `after` is the id of the last job of the previous page. Returns (jobs, more)."""
        return await asyncio.to_thread(
            self._list, kind, key_uuid, admin, statuses, tags, model_id, limit, after
        )

    def _list(
        self,
        kind: str,
        key_uuid: str | None,
        admin: bool,
        statuses: Sequence[str],
        tags: Sequence[tuple[str, str]],
        model_id: str | None,
        limit: int,
        after: str | None,
    ) -> tuple[list[Job], bool]:
        stmt = select(jobs).where(jobs.c.kind == kind, visible(key_uuid, admin))
        if statuses:
            stmt = stmt.where(jobs.c.status.in_(list(statuses)))
        if model_id:
            stmt = stmt.where(jobs.c.model_id == model_id)
        for tag_key, tag_value in tags:
            tagged = select(job_tags.c.job_id).where(job_tags.c.key == tag_key, job_tags.c.value == tag_value)
            stmt = stmt.where(jobs.c.id.in_(tagged))
        with self.engine.connect() as conn:
            if after:  # empty: the first page
                # only a job this caller can list is a cursor: an unknown one is a 400, not page one
                cursor = None
                if "\x00" not in after:  # no id holds NUL (PostgreSQL refuses it in a query)
                    cursor = conn.execute(
                        select(jobs.c.created_us).where(
                            jobs.c.id == after, jobs.c.kind == kind, visible(key_uuid, admin)
                        )
                    ).scalar()
                if cursor is None:
                    raise InvalidRequest(f"after: no job '{after[:64]}' to continue from.", param="after")
                stmt = stmt.where(
                    or_(jobs.c.created_us < cursor, and_(jobs.c.created_us == cursor, jobs.c.id < after))
                )
            rows = conn.execute(
                stmt.order_by(jobs.c.created_us.desc(), jobs.c.id.desc()).limit(limit + 1)
            ).all()
        found = [Job.from_row(r) for r in rows]
        return found[:limit], len(found) > limit

    # -- webhook delivery log ----------------------------------------------------------------------
    def record_delivery(
        self,
        job_id: str,
        attempt: int,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
        outcome: str | None,
    ) -> None:
        """Log one delivery attempt; `outcome` ('delivered', 'failed') ends the job's webhook state."""
        with self.engine.begin() as conn:
            conn.execute(
                job_deliveries.insert().values(
                    job_id=job_id,
                    attempt=attempt,
                    at_us=now_us(),
                    status_code=status_code,
                    error=error,
                    duration_ms=round(duration_ms, 3),
                )
            )
            if outcome:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(webhook_status=outcome))

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(job_deliveries).where(job_deliveries.c.job_id == job_id).order_by(job_deliveries.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]
