"""The durable job queue: one table in our own database, SQLite or PostgreSQL.

No queue library fits: pgqueuer and procrastinate are PostgreSQL-only, huey's SQL storage drops a
job its worker dies with, and Celery/RQ/saq need a broker. So the queue is this module, with
`bench/jobs_bench.py` (against pgqueuer) as its check.

Life of a job: QUEUED -> IN_PROGRESS -> COMPLETED | FAILED | CANCELLED.

- `submit` commits the row before it returns: an accepted job survives any crash.
- `claim` takes due jobs with a lease: `FOR UPDATE SKIP LOCKED` on PostgreSQL (workers never
  wait on each other), one conditional UPDATE on SQLite (writes are serialized there). A claim
  gets a fresh lease token; every later write of the worker (heartbeat, complete, fail) is
  conditional on it, so a worker that lost its lease can never overwrite the job.
- A worker that dies (kill -9, crash, lost connection) stops renewing its lease; once it expires
  the job is claimable again, up to `max_attempts` claims, then FAILED with the reason.
- `cancel` of a running job marks it CANCELLED at once; its worker sees the row change (or is
  told directly, in-process) and cancels the handler's task.
- When a job with a `webhook_url` ends, a `webhook` job is inserted in the same transaction
  (an outbox): the notification is as durable as the result (jobs/webhooks.py delivers it).

How another module adds a job kind (background responses do this)::

    from infergate.jobs.worker import register_handler

    async def run_background_response(job: Job, platform: Platform) -> dict:
        ...  # job.payload is what was submitted; bill with request_id=job.id (see below)
        return {"response": ...}  # stored as the job's output (JSON)

    register_handler("response", run_background_response)

    # and to enqueue, from an api module:
    job = await platform.jobs.submit("response", {"body": ...}, key_uuid=key.uuid, job_id=resp_id)

Add the handler's module to `worker.HANDLER_MODULES` so standalone `infergate worker`
processes import it too. A handler raises `InfergateError` for a clean FAILED with its message,
`RetryLater` to be run again after a delay (counted against `max_attempts`); any other exception
is FAILED as an internal error. A handler may run more than once (its worker died mid-job), so
it bills with `Charge(spec, job.id, job.key_uuid, ...)`: the ledger keeps one row per request id.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy import exc as sa_exc

from infergate.errors import Conflict
from infergate.jobs.model import (
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    RELEASE,
    RETRY,
    STATUSES,
    WEBHOOK_KIND,
    Job,
    Outcome,
    QueueSettings,
    RetryLater,
    now_us,
)
from infergate.jobs.reads import JobReads, visible
from infergate.jobs.tables import ACTIVE, job_deliveries, job_tags, jobs

__all__ = [  # the queue's public names, importable from here
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "IN_PROGRESS",
    "QUEUED",
    "RELEASE",
    "RETRY",
    "STATUSES",
    "WEBHOOK_KIND",
    "Job",
    "JobQueue",
    "Outcome",
    "QueueSettings",
    "RetryLater",
    "now_us",
]


def _final(o: Outcome) -> Outcome:
    """A retry with no attempt left is a failure."""
    if o.status == RETRY and o.job.attempts >= o.job.max_attempts:
        return Outcome(o.job, FAILED, error=o.error)
    return o


# PostgreSQL: finish a batch of jobs in one statement, each only while its claim holds the lease.
FINISH_MANY = text(
    """
    UPDATE jobs SET status = v.status, output = v.output, error = v.error, lease_token = NULL,
                    completed_us = :now, updated_us = :now
    FROM unnest(CAST(:ids AS varchar[]), CAST(:tokens AS varchar[]), CAST(:statuses AS varchar[]),
                CAST(:outputs AS text[]), CAST(:errors AS text[])) AS v(id, token, status, output, error)
    WHERE jobs.id = v.id AND jobs.lease_token = v.token AND jobs.status = 'IN_PROGRESS'
    RETURNING jobs.id
    """
)


class JobQueue(JobReads):
    """The queue's operations; the async ones run their SQL in a thread."""

    def __init__(self, engine: Engine, settings: QueueSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or QueueSettings()
        self.postgres = engine.dialect.name == "postgresql"
        # in-process workers subscribe: woken at once on submit, told at once of a cancel
        self.on_submit: list[Callable[[str], None]] = []
        self.on_cancel: list[Callable[[str], None]] = []

    # -- producers -------------------------------------------------------------------------------
    async def submit(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        key_uuid: str | None,
        job_id: str | None = None,
        tags: Sequence[dict[str, str]] = (),
        webhook_url: str | None = None,
        model_id: str | None = None,
        max_attempts: int | None = None,
        delay: float = 0.0,
    ) -> Job:
        """Enqueue a job, committed before this returns. A duplicate `job_id` is a Conflict."""
        job = await asyncio.to_thread(
            self.submit_now, kind, payload, key_uuid, job_id, tags, webhook_url, model_id, max_attempts, delay
        )
        for wake in self.on_submit:
            wake(kind)
        return job

    def submit_now(
        self,
        kind: str,
        payload: dict[str, Any],
        key_uuid: str | None,
        job_id: str | None = None,
        tags: Sequence[dict[str, str]] = (),
        webhook_url: str | None = None,
        model_id: str | None = None,
        max_attempts: int | None = None,
        delay: float = 0.0,
    ) -> Job:
        """`submit` without the thread hop or the wake-up (for CLI tools and benchmarks)."""
        row = self._new_row(kind, payload, key_uuid, job_id, tags, webhook_url, model_id, max_attempts, delay)
        try:
            with self.engine.begin() as conn:
                self._insert(conn, [row])
        except sa_exc.IntegrityError:
            raise Conflict(f"A job with id '{row['id']}' already exists.", code="duplicate_job") from None
        return Job.from_row(row)

    def submit_many(self, kind: str, payloads: Iterable[dict[str, Any]], key_uuid: str | None = None) -> int:
        """Enqueue many jobs in one transaction (benchmarks, bulk tools)."""
        rows = [self._new_row(kind, p, key_uuid) for p in payloads]
        with self.engine.begin() as conn:
            self._insert(conn, rows)
        return len(rows)

    def _new_row(
        self,
        kind: str,
        payload: dict[str, Any],
        key_uuid: str | None,
        job_id: str | None = None,
        tags: Sequence[dict[str, str]] = (),
        webhook_url: str | None = None,
        model_id: str | None = None,
        max_attempts: int | None = None,
        delay: float = 0.0,
    ) -> dict[str, Any]:
        now = now_us()
        return {
            "id": job_id or str(uuid.uuid4()),
            "kind": kind,
            "key_uuid": key_uuid,
            "model_id": model_id,
            "status": QUEUED,
            "payload": orjson.dumps(payload).decode(),
            "output": None,
            "error": None,
            "tags": orjson.dumps(list(tags)).decode() if tags else None,
            "webhook_url": webhook_url,
            "webhook_status": "pending" if webhook_url else None,
            "attempts": 0,
            "max_attempts": max_attempts or self.settings.max_attempts,
            "lease_token": None,
            "due_us": now + int(delay * 1e6),
            "created_us": now,
            "started_us": None,
            "completed_us": None,
            "updated_us": now,
        }

    @staticmethod
    def _insert(conn: Connection, rows: list[dict[str, Any]]) -> None:
        conn.execute(jobs.insert(), rows)
        tag_rows = {
            (r["id"], t["key"], t["value"]): None for r in rows if r["tags"] for t in orjson.loads(r["tags"])
        }
        if tag_rows:
            conn.execute(job_tags.insert(), [{"job_id": i, "key": k, "value": v} for i, k, v in tag_rows])

    # -- workers ---------------------------------------------------------------------------------
    def claim(self, kinds: Sequence[str], limit: int) -> list[Job]:
        """Lease up to `limit` due jobs of these kinds (queued, or running with an expired lease).

        A job claimed past its `max_attempts` is FAILED here instead of being handed out."""
        now = now_us()
        token = uuid.uuid4().hex
        due = (
            select(jobs.c.id)
            .where(ACTIVE, jobs.c.due_us <= now, jobs.c.kind.in_(kinds))
            .order_by(jobs.c.due_us)
            .limit(limit)
        )
        if self.postgres:
            due = due.with_for_update(skip_locked=True)
        stmt = (
            update(jobs)
            .where(jobs.c.id.in_(due.scalar_subquery()))
            .values(
                status=IN_PROGRESS,
                lease_token=token,
                due_us=now + int(self.settings.lease_seconds * 1e6),
                attempts=jobs.c.attempts + 1,
                started_us=func.coalesce(jobs.c.started_us, now),
                updated_us=now,
            )
            .returning(*jobs.c)
        )
        with self.engine.begin() as conn:
            claimed = [Job.from_row(r) for r in conn.execute(stmt)]
            exhausted = [j for j in claimed if j.attempts > j.max_attempts]
            for job in exhausted:
                reason = (
                    f"The job was abandoned {job.max_attempts} time(s): its worker stopped (killed, "
                    "crashed or cut off from the database) before finishing it; not retried again."
                )
                self._finish(conn, job, FAILED, None, reason)
        return [j for j in claimed if j.attempts <= j.max_attempts]

    def heartbeat(self, leases: Sequence[tuple[str, str]]) -> set[str]:
        """Extend the leases still held; returns the ids whose lease is lost (cancelled, taken over)."""
        now = now_us()
        lost: set[str] = set()
        with self.engine.begin() as conn:
            for job_id, token in leases:
                result = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.lease_token == token, jobs.c.status == IN_PROGRESS)
                    .values(due_us=now + int(self.settings.lease_seconds * 1e6), updated_us=now)
                )
                if result.rowcount == 0:
                    lost.add(job_id)
        return lost

    def lost_leases(self, leases: Sequence[tuple[str, str]]) -> set[str]:
        """Read-only check of the same: which of these jobs were cancelled or taken over."""
        held = dict(leases)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.status, jobs.c.lease_token).where(jobs.c.id.in_(list(held)))
            ).all()
        still = {r.id for r in rows if r.status == IN_PROGRESS and r.lease_token == held[r.id]}
        return set(held) - still

    def complete(self, job: Job, output: Any) -> bool:
        return self.record([Outcome(job, COMPLETED, output=output)])[0]

    def fail(self, job: Job, error: str) -> bool:
        return self.record([Outcome(job, FAILED, error=error)])[0]

    def retry(self, job: Job, delay: float, error: str) -> bool:
        """Back to QUEUED after `delay` seconds, or FAILED with `error` when no attempt is left."""
        return self.record([Outcome(job, RETRY, error=error, delay=delay)])[0]

    def release(self, job: Job) -> bool:
        """Give a job back unfinished (graceful shutdown): queued again, this attempt not counted."""
        return self.record([Outcome(job, RELEASE)])[0]

    def record(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Write how jobs ended, in one transaction (a busy worker's batch). Each write applies only
        while its claim holds the lease: False for a job cancelled or taken over meanwhile."""
        outcomes = [_final(o) for o in outcomes]
        with self.engine.begin() as conn:
            if not self.postgres:  # statements are function calls there: one per outcome is cheap
                return [self._apply(conn, o) for o in outcomes]
            # PostgreSQL: every finished job of the batch in one statement (one round trip)
            done = self._finish_many(conn, [o for o in outcomes if o.status in (COMPLETED, FAILED)])
            return [
                o.job.id in done if o.status in (COMPLETED, FAILED) else self._apply(conn, o)
                for o in outcomes
            ]

    def _finish_many(self, conn: Connection, outcomes: list[Outcome]) -> set[str]:
        if not outcomes:
            return set()
        now = now_us()
        params = {
            "ids": [o.job.id for o in outcomes],
            "tokens": [o.job.lease_token for o in outcomes],
            "statuses": [o.status for o in outcomes],
            "outputs": [orjson.dumps(o.output).decode() if o.output is not None else None for o in outcomes],
            "errors": [o.error for o in outcomes],
            "now": now,
        }
        done = {row[0] for row in conn.execute(FINISH_MANY, params)}
        for o in outcomes:
            if o.job.id in done:
                self._notify(conn, o.job)
        return done

    def _apply(self, conn: Connection, o: Outcome) -> bool:
        job = o.job
        if o.status in (COMPLETED, FAILED):
            return self._finish(conn, job, o.status, o.output, o.error)
        now = now_us()
        if o.status == RETRY:
            values = {"due_us": now + int(o.delay * 1e6), "error": o.error}
        else:  # RELEASE
            values = {"due_us": now, "attempts": jobs.c.attempts - 1}
        # queued again: not started (a later claim sets started_us anew)
        stmt = self._held(job).values(
            status=QUEUED, lease_token=None, started_us=None, updated_us=now, **values
        )
        return conn.execute(stmt).rowcount == 1

    async def checkpoint(self, job: Job, data: dict[str, Any]) -> bool:
        """Save a running job's progress into `payload["checkpoint"]` (merged), while its claim holds
        the lease: a later run of the job (its worker died) reads it back from `job.payload`."""
        payload = {**job.payload, "checkpoint": {**job.payload.get("checkpoint", {}), **data}}
        stmt = self._held(job).values(payload=orjson.dumps(payload).decode(), updated_us=now_us())

        def write() -> bool:
            with self.engine.begin() as conn:
                return conn.execute(stmt).rowcount == 1

        return await asyncio.to_thread(write)

    def purge(self, limit: int = 1000) -> int:
        """Delete up to `limit` jobs finished before the retention, with their tags and delivery logs."""
        if not self.settings.retention_days:
            return 0
        cutoff = now_us() - int(self.settings.retention_days * 86_400e6)
        old = (
            select(jobs.c.id)
            .where(jobs.c.status.in_((COMPLETED, FAILED, CANCELLED)), jobs.c.completed_us < cutoff)
            .limit(limit)
        )
        with self.engine.begin() as conn:
            ids = list(conn.execute(old).scalars())
            if ids:
                conn.execute(job_tags.delete().where(job_tags.c.job_id.in_(ids)))
                conn.execute(job_deliveries.delete().where(job_deliveries.c.job_id.in_(ids)))
                conn.execute(jobs.delete().where(jobs.c.id.in_(ids)))
        return len(ids)

    def next_due_us(self, kinds: Sequence[str]) -> int | None:
        """When the earliest job of these kinds becomes claimable (None: no active job)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.min(jobs.c.due_us)).where(ACTIVE, jobs.c.kind.in_(kinds))
            ).scalar()

    @staticmethod
    def _held(job: Job) -> Any:
        """An UPDATE of a job that applies only while this claim still holds its lease."""
        return update(jobs).where(
            jobs.c.id == job.id, jobs.c.lease_token == job.lease_token, jobs.c.status == IN_PROGRESS
        )

    def _finish(self, conn: Connection, job: Job, status: str, output: Any, error: str | None) -> bool:
        now = now_us()
        values: dict[str, Any] = {
            "status": status,
            "lease_token": None,
            "completed_us": now,
            "updated_us": now,
            "error": error,
        }
        if output is not None:
            values["output"] = orjson.dumps(output).decode()
        if conn.execute(self._held(job).values(**values)).rowcount != 1:
            return False  # cancelled meanwhile, or another worker took the job over
        self._notify(conn, job)
        return True

    def _notify(self, conn: Connection, job: Job) -> None:
        """The outbox: a finished job's webhook is queued with its result, atomically."""
        if job.webhook_url and job.kind != WEBHOOK_KIND:
            row = self._new_row(
                WEBHOOK_KIND,
                {"job_id": job.id},
                job.key_uuid,
                job_id=f"wh-{job.id}",
                max_attempts=self.settings.webhook_attempts,
            )
            self._insert(conn, [row])

    async def cancel(self, job_id: str, key_uuid: str | None = None, *, admin: bool = False) -> Job | None:
        """Cancel a queued or running job: the cancelled job, None if not visible, Conflict if done."""
        job = await asyncio.to_thread(self._cancel, job_id, key_uuid, admin)
        if job is not None:
            for tell in self.on_cancel:
                tell(job_id)
        return job

    def _cancel(self, job_id: str, key_uuid: str | None, admin: bool) -> Job | None:
        now = now_us()
        with self.engine.begin() as conn:
            row = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, visible(key_uuid, admin), ACTIVE)
                .values(
                    status=CANCELLED,
                    lease_token=None,
                    completed_us=now,
                    updated_us=now,
                    error="Cancelled by the client.",
                )
                .returning(*jobs.c)
            ).first()
            if row is not None:
                job = Job.from_row(row)
                self._notify(conn, job)
                return job
        job = self.get_now(job_id, key_uuid, admin)
        if job is None:
            return None
        raise Conflict(
            f"The job '{job_id}' is already {job.status} and cannot be cancelled.", code="job_done"
        )
