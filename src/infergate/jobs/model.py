"""The queue's values: job statuses, a job as read from its row, how a claimed job ended, settings."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from infergate.config import float_env, int_env

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = (
    "QUEUED",
    "IN_PROGRESS",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
)
STATUSES = (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
WEBHOOK_KIND = "webhook"


def now_us() -> int:
    return time.time_ns() // 1000


class RetryLater(Exception):
    """Raised by a handler: run the job again after `delay` seconds (if attempts remain)."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


RETRY, RELEASE = "RETRY", "RELEASE"  # outcomes that queue the job again


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a claimed job ended: COMPLETED (output), FAILED (error), RETRY (after `delay`, unless no
    attempt is left) or RELEASE (handed back at shutdown, the attempt not counted)."""

    job: Job
    status: str
    output: Any = None
    error: str | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class QueueSettings:
    lease_seconds: float = 30.0  # a worker renews its leases every third of this
    retention_days: float = 30.0  # finished jobs (and their tags, delivery logs) kept this long; 0: forever
    max_attempts: int = 3  # claims of one job before it is FAILED (its workers kept dying)
    webhook_attempts: int = 8  # deliveries of one notification (1 s, 2 s, 4 s ... apart)

    @classmethod
    def from_env(cls) -> QueueSettings:
        return cls(
            lease_seconds=float_env("INFERGATE_JOB_LEASE_SECONDS", 30.0, minimum=0.5),
            max_attempts=int_env("INFERGATE_JOB_MAX_ATTEMPTS", 3, minimum=1),
            webhook_attempts=int_env("INFERGATE_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1),
            retention_days=float_env("INFERGATE_JOB_RETENTION_DAYS", 30.0, minimum=0.0),
        )


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str
    status: str
    key_uuid: str | None
    model_id: str | None
    payload: dict[str, Any]
    output: Any
    error: str | None
    tags: list[dict[str, str]]
    webhook_url: str | None
    webhook_status: str | None
    attempts: int
    max_attempts: int
    lease_token: str | None
    created_us: int
    started_us: int | None
    completed_us: int | None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        m = row._mapping if hasattr(row, "_mapping") else row
        return cls(
            id=m["id"],
            kind=m["kind"],
            status=m["status"],
            key_uuid=m["key_uuid"],
            model_id=m["model_id"],
            payload=orjson.loads(m["payload"]),
            output=orjson.loads(m["output"]) if m["output"] is not None else None,
            error=m["error"],
            tags=orjson.loads(m["tags"]) if m["tags"] else [],
            webhook_url=m["webhook_url"],
            webhook_status=m["webhook_status"],
            attempts=m["attempts"],
            max_attempts=m["max_attempts"],
            lease_token=m["lease_token"],
            created_us=m["created_us"],
            started_us=m["started_us"],
            completed_us=m["completed_us"],
        )
