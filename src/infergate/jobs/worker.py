"""Job workers: claim due jobs, run their kind's handler, record the outcome.

`infergate serve` runs one in-process worker (INFERGATE_WORKER=0 turns it off); `infergate
worker` runs standalone ones, on any host that shares the database. A worker:

- claims up to its free slots at once (`INFERGATE_WORKER_CONCURRENCY`), then polls every
  `INFERGATE_WORKER_POLL_MS` while idle (an in-process worker is also woken at once on submit);
- renews the leases of its running jobs every third of the lease, and checks every poll whether
  any of them was cancelled or taken over: that job's task is cancelled promptly;
- on SIGTERM stops claiming, gives running jobs the grace period, then hands the rest back
  (queued again, the attempt not counted). After kill -9 the leases simply expire.

Handlers are registered per job kind (`register_handler`); see jobs/queue.py for the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from infergate.config import bool_env, int_env
from infergate.errors import InfergateError
from infergate.jobs.queue import (
    COMPLETED,
    FAILED,
    RELEASE,
    RETRY,
    Job,
    JobQueue,
    Outcome,
    RetryLater,
    now_us,
)
from infergate.observability import REGISTRY

log = logging.getLogger("infergate.jobs")
Handler = Callable[[Job, Any], Awaitable[Any]]
# Modules that register job kinds when imported: every worker imports them.
HANDLER_MODULES = (
    "infergate.jobs.invoke",
    "infergate.jobs.fal_invoke",
    "infergate.jobs.webhooks",
    "infergate.responses.background",
)
_handlers: dict[str, Handler] = {}
PURGE_EVERY = 3600.0  # seconds between retention sweeps
PURGE_BATCH = 1000
JOBS_FINISHED = Counter(
    "infergate_jobs_finished_total",
    "Jobs that ended, by kind and outcome",
    ["kind", "status"],
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "infergate_job_seconds",
    "Time a job's handler ran",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
    registry=REGISTRY,
)


def register_handler(kind: str, handler: Handler) -> None:
    """`handler(job, platform)` returns the job's output (JSON-serializable) or raises."""
    _handlers[kind] = handler


def load_handlers(extra_modules: tuple[str, ...] = ()) -> dict[str, Handler]:
    """Import the handler modules (built-in, then INFERGATE_JOB_HANDLERS plugins); the registry."""
    for name in (*HANDLER_MODULES, *extra_modules):
        importlib.import_module(name)
    return dict(_handlers)


@dataclass(frozen=True)
class WorkerSettings:
    enabled: bool = True  # the in-process worker of `infergate serve`
    concurrency: int = 4  # jobs run at once by one worker
    poll_seconds: float = 0.25  # idle polling for jobs submitted elsewhere
    grace_seconds: float = 30.0  # running jobs get this long on shutdown before being handed back
    handler_modules: tuple[str, ...] = ()  # extra modules registering job kinds (plugins)

    @classmethod
    def from_env(cls) -> WorkerSettings:
        modules = os.environ.get("INFERGATE_JOB_HANDLERS", "")
        return cls(
            enabled=bool_env("INFERGATE_WORKER", True),
            concurrency=int_env("INFERGATE_WORKER_CONCURRENCY", 4, minimum=1),
            poll_seconds=int_env("INFERGATE_WORKER_POLL_MS", 250, minimum=1) / 1000,
            grace_seconds=float(int_env("INFERGATE_SHUTDOWN_GRACE", 30, minimum=1)),
            handler_modules=tuple(m.strip() for m in modules.split(",") if m.strip()),
        )


class Worker:
    def __init__(self, queue: JobQueue, platform: Any, settings: WorkerSettings) -> None:
        self.queue = queue
        self.platform = platform
        self.settings = settings
        self.handlers = load_handlers(settings.handler_modules)
        self.kinds = sorted(self.handlers)
        self.name = f"worker-{uuid.uuid4().hex[:8]}"
        self.running: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self._dropped: set[str] = set()  # cancelled or taken over: nothing more to write for them
        self._stopping = False
        self._wake = asyncio.Event()
        self._slot = asyncio.Event()
        self._busy = 0  # handlers running; a job whose outcome is being written no longer counts
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: list[tuple[Outcome, asyncio.Future[bool]]] = []  # outcomes waiting to be written
        self._flusher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.queue.on_submit.append(self._on_submit)
        self.queue.on_cancel.append(self._on_cancel)
        self._tasks = [
            asyncio.create_task(self._claim_loop()),
            asyncio.create_task(self._watch_loop()),
            asyncio.create_task(self._purge_loop()),
        ]
        log.info(
            "%s started: kinds %s, concurrency %d",
            self.name,
            ", ".join(self.kinds),
            self.settings.concurrency,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let running jobs finish within `grace`, then hand the rest back."""
        self._stopping = True
        self._wake.set()
        self._slot.set()
        for task in self._tasks[:1]:  # the claim loop; the watch loop keeps leases alive meanwhile
            task.cancel()
        pending = [task for _job, task in self.running.values()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.grace_seconds if grace is None else grace)
        for _job, task in list(self.running.values()):
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(ValueError):
            self.queue.on_submit.remove(self._on_submit)
            self.queue.on_cancel.remove(self._on_cancel)

    async def run_forever(self) -> None:
        self.start()
        await asyncio.gather(*self._tasks)

    # -- in-process notifications ------------------------------------------------------------------
    def _on_submit(self, kind: str) -> None:
        if kind in self.handlers:
            self._wake.set()

    def _on_cancel(self, job_id: str) -> None:
        self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        entry = self.running.get(job_id)
        if entry is not None:
            self._dropped.add(job_id)
            entry[1].cancel()

    # -- loops -----------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        idle = False  # the last claim found nothing: poll with a read before writing again
        while not self._stopping:
            free = self.settings.concurrency - self._busy
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                if idle and not woken and not await asyncio.to_thread(self._anything_due):
                    claimed = []  # an idle poll is a read: no write lock on SQLite, no WAL traffic
                else:
                    claimed = await asyncio.to_thread(self.queue.claim, self.kinds, free)
            except Exception as exc:
                log.warning("%s: claim failed (%s); retrying", self.name, _short(exc))
                claimed = []
            for job in claimed:
                self.running[job.id] = (job, asyncio.create_task(self._run(job)))
            idle = len(claimed) < free
            if idle:  # nothing more is due now: wait for a poll or a wake-up
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    def _anything_due(self) -> bool:
        due = self.queue.next_due_us(self.kinds)
        return due is not None and due <= now_us()

    async def _purge_loop(self) -> None:
        """Finished jobs past INFERGATE_JOB_RETENTION_DAYS are deleted, a batch at a time, hourly."""
        while True:
            await asyncio.sleep(PURGE_EVERY)
            try:
                while await asyncio.to_thread(self.queue.purge) == PURGE_BATCH:
                    pass
            except Exception as exc:
                log.warning("%s: job retention sweep failed (%s)", self.name, _short(exc))

    async def _watch_loop(self) -> None:
        """Leases renewed every third of the lease; cancels and take-overs noticed every poll."""
        beat_every = self.queue.settings.lease_seconds / 3
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + beat_every
        while True:
            await asyncio.sleep(min(self.settings.poll_seconds, beat_every))
            leases = [(j.id, j.lease_token or "") for j, _task in self.running.values()]
            if not leases:
                next_beat = loop.time() + beat_every
                continue
            try:
                if loop.time() >= next_beat:
                    lost = await asyncio.to_thread(self.queue.heartbeat, leases)
                    next_beat = loop.time() + beat_every
                else:
                    lost = await asyncio.to_thread(self.queue.lost_leases, leases)
            except Exception as exc:
                log.warning("%s: lease renewal failed (%s); retrying", self.name, _short(exc))
                continue
            for job_id in lost:
                self._drop(job_id)

    # -- one job ----------------------------------------------------------------------------------
    async def _run(self, job: Job) -> None:
        self._busy += 1
        started = time.perf_counter()
        try:
            outcome = await self._outcome(job)
            JOB_SECONDS.labels(job.kind).observe(time.perf_counter() - started)
            JOBS_FINISHED.labels(job.kind, outcome.status).inc()
        finally:
            # the slot is free once the handler is done: the next claim overlaps this write
            self._busy -= 1
            self._slot.set()
        try:
            if job.id not in self._dropped:
                await self._record(outcome)
        except Exception as exc:  # the database failed us: the lease expires and the job is retried
            log.warning("%s: job %s outcome not recorded (%s)", self.name, job.id, _short(exc))
        finally:
            self.running.pop(job.id, None)
            self._dropped.discard(job.id)

    async def _outcome(self, job: Job) -> Outcome:
        """Run the handler; how it ended."""
        try:
            output = await self.handlers[job.kind](job, self.platform)
        except asyncio.CancelledError:
            if job.id in self._dropped:
                log.info("%s: job %s stopped (cancelled or taken over)", self.name, job.id)
            else:
                log.info("%s: job %s handed back at shutdown", self.name, job.id)
            return Outcome(job, RELEASE)
        except RetryLater as exc:
            return Outcome(job, RETRY, error=exc.reason, delay=exc.delay)
        except InfergateError as exc:
            return Outcome(job, FAILED, error=exc.message)
        except Exception as exc:
            log.exception("%s: job %s (%s) failed", self.name, job.id, job.kind)
            return Outcome(job, FAILED, error=f"Internal error while running the job ({type(exc).__name__}).")
        return Outcome(job, COMPLETED, output=output)

    async def _record(self, outcome: Outcome) -> bool:
        """Outcomes are written in groups: one transaction for all that ended while the previous
        write was in flight (a busy worker commits once per batch, an idle one at once)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self.queue.record, [o for o, _f in batch])
            except Exception as exc:
                for _o, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_o, future), ok in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(ok)


def _short(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    lines = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {lines[0][:200] if lines else ''}"


async def start_worker(platform: Any, settings: WorkerSettings) -> Worker | None:
    """The in-process worker of `infergate serve` (None when INFERGATE_WORKER=0)."""
    load_handlers(settings.handler_modules)  # the api checks submissions against them, worker or not
    if not settings.enabled:
        return None
    worker = Worker(platform.jobs, platform, settings)
    worker.start()
    return worker


async def run_standalone(settings: Any, concurrency: int | None = None) -> None:
    """`infergate worker`: the platform (engines, ledger, media) without HTTP, until SIGTERM/SIGINT."""
    import dataclasses
    import signal
    import sys

    from infergate.config import SettingError
    from infergate.platform import Platform

    if concurrency is not None and concurrency < 1:
        raise SettingError(f"--concurrency must be at least 1, got {concurrency}")
    platform = Platform(settings)
    ws = platform.worker_settings
    platform.worker_settings = dataclasses.replace(
        ws, enabled=True, concurrency=concurrency or ws.concurrency
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await platform.start()
    worker = platform.job_worker
    assert worker is not None
    print(
        f"infergate worker: {worker.name} ready (kinds {', '.join(worker.kinds)}, "
        f"concurrency {worker.settings.concurrency})",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    print(f"infergate worker: {worker.name} stopping", file=sys.stderr, flush=True)
    await platform.close()  # running jobs finish or are handed back; the ledger is flushed


def check_settings() -> None:
    """Validate every jobs setting (queue, worker, webhooks) at start: a bad value exits 2, named."""
    from infergate.jobs.queue import QueueSettings
    from infergate.jobs.webhooks import settings as webhook_settings

    QueueSettings.from_env()
    WorkerSettings.from_env()
    webhook_settings()
