"""Group commit: many concurrent writers share one transaction, written by one thread.

A stored response must be durable before `POST /v1/responses` answers, but one transaction per
request would cap throughput at the database's commit rate. Writers hand an operation (a function
of a Connection) to the committer's thread; while it commits one batch the next one gathers, so
at high concurrency each commit carries many requests. A batch that fails is retried one
operation per transaction, so one bad operation fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine

log = logging.getLogger("infergate.storage")
Operation = Callable[[Connection], Any]
_STOP = object()


class GroupCommitter:
    def __init__(self, engine: Engine, name: str = "group-commit", max_batch: int = 256) -> None:
        self._engine = engine
        self._name = name
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, op: Operation) -> asyncio.Future[Any]:
        """Queue `op`; the future resolves with its result once its transaction committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._thread is None:
                # a daemon thread, not asyncio.to_thread: a hung database must not block exit
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put((loop, future, op))
        return future

    async def run(self, op: Operation) -> Any:
        return await self.submit(op)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread (waits at most `timeout`)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            thread.join(timeout)

    def _serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[tuple[Any, asyncio.Future[Any], Operation]]) -> None:
        try:
            with self._engine.begin() as conn:
                outcomes = [(True, op(conn)) for _, _, op in batch]
        except Exception as error:
            if len(batch) == 1:
                outcomes = [(False, error)]
            else:  # find the failing operation: each alone in its own transaction
                outcomes = []
                for _, _, op in batch:
                    try:
                        with self._engine.begin() as conn:
                            outcomes.append((True, op(conn)))
                    except Exception as exc:
                        outcomes.append((False, exc))
        for (loop, future, _), outcome in zip(batch, outcomes, strict=True):
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
