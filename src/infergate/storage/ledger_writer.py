"""The ledger writer: usage rows batched off the request path, never lost.

`record()` only appends an entry to a list (it runs on the event loop for every request). A
flush renders the entries (`entry.row()`) and inserts them in the writer's own thread. Rows
are keyed by request id and inserted with "ignore duplicates", so writing a row twice (a retry,
a replay, a batch both committed and spilled) still counts the request once. That is what makes
every fallback below safe:

- the database is down: the batch stays in memory and is retried with exponential backoff
  (logged once per state change); past `max_pending` rows, they go to the spill file instead;
- shutdown while the database is down, or while a write hangs: the rest goes to the spill file;
- the spill file (storage/spill.py) is replayed at the next start, and after the database
  comes back, by one process at a time, crash-safe; a corrupt line is set aside in the
  rejected file and the rest replayed;
- a row the database refuses for its content (not for being down) is set aside in the rejected
  file too, so one bad row cannot block every later one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc

from infergate.observability import LEDGER_PENDING_ROWS, LEDGER_SPILLED_ROWS, LEDGER_WRITE_FAILURES
from infergate.storage.spill import Row, SpillFile, dumps

log = logging.getLogger("infergate.ledger")


class LedgerRow(Protocol):
    def row(self) -> Row: ...


class _Batch:
    """Rows being written. `parts` (rendered rows, entries not yet rendered) is replaced in one
    assignment, so whoever reclaims a batch whose write hangs reads a consistent pair."""

    def __init__(self, rows: list[Row], entries: list[Any]) -> None:
        self.parts: tuple[list[Row], list[Any]] = (rows, entries)
        self.future: asyncio.Future[BaseException | None] | None = None

    def __len__(self) -> int:
        return len(self.parts[0]) + len(self.parts[1])


class _WriterThread:
    """One daemon thread running the writer's jobs in order. Not `asyncio.to_thread`: that pool is
    joined at interpreter exit, so a write hung on a dead database connection would keep the
    process from ever exiting; its batch is spilled by `close()` instead."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="ledger-writer", daemon=True)
            self._thread.start()
        self._jobs.put((loop, future, fn, args))
        return future

    def _serve(self) -> None:
        while True:
            loop, future, fn, args = self._jobs.get()
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except BaseException as exc:  # handed to the awaiting coroutine, never lost here
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed while we wrote
                loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _row_fault(exc: BaseException) -> bool:
    """The database refused the data, not the connection: retrying the same rows cannot help."""
    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
        return True
    if isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError):
        return True  # a row SQLAlchemy could not bind (missing or wrong-typed value)
    return isinstance(exc, TypeError | ValueError | KeyError)


def _short(exc: BaseException) -> str:
    """The driver's own message: SQLAlchemy's text would carry the SQL and every row's values."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0][:300] if text else ''}"


class LedgerWriter:
    """Collects ledger entries in memory and writes them in batches off the request path."""

    def __init__(
        self,
        write_rows: Callable[[list[Row]], None],
        spill_path: Path,
        flush_interval: float = 0.2,
        max_batch: int = 2000,
        max_pending: int = 10_000,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        close_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write_rows = write_rows
        self.spill = SpillFile(spill_path)
        self.spill_path = spill_path
        self.replaying_path = self.spill.replaying_path
        self.rejected_path = self.spill.rejected_path
        self._interval = flush_interval
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._close_timeout = close_timeout
        self._clock = clock
        self._entries: list[Any] = []  # recorded, not rendered yet
        self._rows: list[Row] = []  # rendered rows a failed write gave back; written first
        self._inflight: _Batch | None = None
        self._failures = 0  # consecutive failed writes; 0 = the database is reachable
        self._retry_at = 0.0
        self._wake_at = max_batch  # record() wakes the flusher when this many entries wait
        self._replay_due = False
        self._thread = _WriterThread()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # --- the request path ------------------------------------------------------------------------

    def record(self, entry: LedgerRow) -> None:
        """O(1): rendering, pricing and writing happen in the writer's thread."""
        self._entries.append(entry)
        if len(self._entries) >= self._wake_at:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        inflight = len(self._inflight) if self._inflight is not None else 0
        return len(self._entries) + len(self._rows) + inflight

    @property
    def failing(self) -> bool:
        return self._failures > 0

    # --- life --------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._replay("start")
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.next_wait())
            self._wakeup.clear()
            try:
                await self.tick()
            except Exception:  # the flusher must outlive any surprise, or usage piles up unseen
                log.exception("ledger writer: unexpected error; retrying")
                self._note_failure(None)

    def next_wait(self) -> float:
        """Seconds until the flusher's next round: the flush interval, or the end of the backoff
        when something waits for the database (not a busy loop when nothing does)."""
        if self._failures and (self._rows or self._entries or self._replay_due):
            return max(self._retry_at - self._clock(), 0.0)
        return self._interval

    async def tick(self) -> None:
        """One round of the flusher: write and replay (unless backing off), spill past the bound."""
        backing_off = self._failures and self._clock() < self._retry_at
        if not backing_off and await self.flush() and self._replay_due:
            await self._replay("recovery")
        if self._failures and len(self._rows) + len(self._entries) > self._max_pending:
            await self._spill_pending("the database is unreachable")
        LEDGER_PENDING_ROWS.set(self.pending)

    async def flush(self) -> bool:
        """Write everything pending now (backoff or not). False if the database refused it."""
        async with self._lock:
            while self._rows or self._entries:
                rows, self._rows = self._rows[: self._max_batch], self._rows[self._max_batch :]
                take = self._max_batch - len(rows)
                entries, self._entries = self._entries[:take], self._entries[take:]
                batch = self._inflight = _Batch(rows, entries)
                batch.future = self._thread.submit(self._write_batch, batch)
                # shielded: if close() cancels us mid-write, the batch stays in _inflight for it
                error = await asyncio.shield(batch.future)
                if self._inflight is not batch:  # close() reclaimed it meanwhile
                    return error is None
                self._inflight = None
                if error is not None:
                    self._give_back(batch)
                    self._note_failure(error)
                    return False
                self._note_success()
        return True

    async def close(self) -> None:
        """Stop the flusher, write what is left if the database lets us, spill the rest."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if await self._reclaim_inflight(self._close_timeout) and not self._failures:
            # one last try, unless the database is known down; a write that hangs is given up on
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), self._close_timeout)
            await self._reclaim_inflight(0)
        if self._rows or self._entries:
            await self._spill_pending("the database was unreachable at shutdown")
        LEDGER_PENDING_ROWS.set(0)

    async def _reclaim_inflight(self, timeout: float) -> bool:
        """Wait for a write that a cancelled flush left running; take its rows back unless it
        committed. Rows of a write that still hangs may commit later too: replay ignores those.
        False if the write still hangs (the writer thread is stuck with it)."""
        batch = self._inflight
        if batch is None or batch.future is None:
            return True
        self._inflight = None
        hangs = False
        try:
            error = await asyncio.wait_for(asyncio.shield(batch.future), timeout)
        except TimeoutError:
            hangs = True
            error = TimeoutError(f"a ledger write still hangs after {timeout:g}s")
        if error is not None:
            self._give_back(batch)
            self._note_failure(error)  # the database is down: no last try at shutdown
        return not hangs

    def _give_back(self, batch: _Batch) -> None:
        rows, entries = batch.parts
        self._rows[:0] = rows
        self._entries[:0] = entries

    # --- retry state ----------------------------------------------------------------------------------

    def _note_failure(self, error: BaseException | None) -> None:
        self._failures += 1
        LEDGER_WRITE_FAILURES.inc()
        delay = min(self._backoff_max, self._backoff_base * 2 ** min(self._failures - 1, 30))
        self._retry_at = self._clock() + delay
        # while failing, wake only when the bound is passed (to spill), not at every batch
        self._wake_at = max(self._max_pending - len(self._rows) + 1, 1)
        if self._failures == 1 and error is not None:
            log.error(
                "ledger writes failing (%s): %d rows kept, retrying with backoff (max %gs); "
                "past %d rows they go to %s",
                _short(error),
                self.pending,
                self._backoff_max,
                self._max_pending,
                self.spill_path,
            )
        else:
            log.debug("ledger write failed again (attempt %d); next in %.1fs", self._failures, delay)

    def _note_success(self) -> None:
        if self._failures:
            log.warning("ledger database reachable again after %d failed writes", self._failures)
            self._replay_due = True  # rows spilled meanwhile (by any process) go in now
        self._failures = 0
        self._retry_at = 0.0
        self._wake_at = self._max_batch

    # --- in the writer's thread -----------------------------------------------------------------------

    def _write_batch(self, batch: _Batch) -> BaseException | None:
        rows = self._render(batch)
        try:
            self._insert(rows)
        except Exception as exc:
            return exc
        return None

    def _render(self, batch: _Batch) -> list[Row]:
        rows, entries = batch.parts
        if entries:
            rows = rows + self._rows_of(entries)
            batch.parts = (rows, [])
        return rows

    @staticmethod
    def _rows_of(entries: list[Any]) -> list[Row]:
        rows = []
        for entry in entries:
            try:
                rows.append(entry.row())
            except Exception:
                log.exception("a ledger entry could not be rendered and is dropped: %r", type(entry))
        return rows

    def _insert(self, rows: list[Row]) -> None:
        """Insert rows; rows refused for their content are set aside, the others written."""
        if not rows:
            return
        try:
            self._write_rows(rows)
        except Exception as exc:
            if not _row_fault(exc):
                raise
            refused = [(rows[0], exc)] if len(rows) == 1 else []
            for row in rows if len(rows) > 1 else []:  # find the bad ones; the database going down raises
                try:
                    self._write_rows([row])
                except Exception as one:
                    if not _row_fault(one):
                        raise
                    refused.append((row, one))
            if refused:
                self.spill.reject([dumps(r) for r, _ in refused])
                log.error(
                    "the database refused %d ledger rows (%s); kept in %s",
                    len(refused),
                    _short(refused[0][1]),
                    self.rejected_path,
                )

    def _spill(self, rows: list[Row], entries: list[Any]) -> int:
        rows = rows + self._rows_of(entries)
        self.spill.append(rows)
        return len(rows)

    # --- on the loop, waiting for the threads ----------------------------------------------------

    async def _spill_pending(self, why: str) -> None:
        rows, entries = self._rows, self._entries
        self._rows, self._entries = [], []
        self._wake_at = self._max_pending + 1 if self._failures else self._max_batch
        try:
            count = await asyncio.to_thread(self._spill, rows, entries)
        except Exception as exc:
            lost = len(rows) + len(entries)
            log.critical(
                "ledger rows could not be spilled to %s (%s): %d rows lost", self.spill_path, exc, lost
            )
            return
        LEDGER_SPILLED_ROWS.inc(count)
        self._replay_due = True
        log.error("%s: %d ledger rows spilled to %s", why, count, self.spill_path)

    async def _replay(self, when: str) -> None:
        """Replay the spill file; a failure is retried with the writes' backoff, never fatal."""
        self._replay_due = False
        if not self.spill.has_rows():
            return
        try:
            await self._thread.submit(self.spill.replay, self._insert, self._max_batch)
        except Exception as exc:
            self._replay_due = True
            log.warning("ledger spill replay at %s failed; will retry", when)
            self._note_failure(exc)
        else:
            self._note_success()
