"""Group commit: many concurrent writers share one transaction, written by one thread.

A stored response must be durable before `POST /v1/responses` answers, but one transaction per
request would cap throughput at the database's commit rate. Writers hand an operation (a function
of a Connection) to the committer's thread; while it commits one batch the next one gathers, so
at high concurrency each commit carries many requests. A batch that fails is retried one
operation per transaction, so one bad operation fails alone.

Plain inserts are handed over as `Rows`: the inserts of a whole batch are merged into one
executemany per statement (building a statement per row costs more than writing it). On SQLite
that executemany goes straight to the driver's cursor with the statement compiled once: SQLAlchemy's
per-row parameter processing cost more CPU than SQLite's insert itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.sql import Insert

log = logging.getLogger("infergate.storage")
Operation = Callable[[Connection], Any]
_STOP = object()


@dataclass
class Rows:
    """Rows for prepared insert statements (module constants: merged by identity), then an
    optional operation run after every insert of the batch (its result is the future's)."""

    inserts: list[tuple[Any, list[dict[str, Any]]]] = field(default_factory=list)
    then: Operation | None = None


Work = Operation | Rows


# (statement, dialect name, column keys) -> how the driver takes it, or None: SQLAlchemy executes it
_DRIVER_SQL: dict[tuple[Any, str, tuple[str, ...]], _DriverInsert | None] = {}


@dataclass(frozen=True)
class _DriverInsert:
    sql: str
    get: Callable[[dict[str, Any]], Any]  # a row's values in parameter order
    single: bool  # one column: `get` returns the value, not a tuple
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, bind processor)

    def params(self, rows: list[dict[str, Any]]) -> list[Any]:
        get = self.get
        if self.single:
            return [(get(row),) for row in rows]
        if not self.processors:
            return [get(row) for row in rows]
        out = []
        for row in rows:
            values = list(get(row))
            for i, process in self.processors:
                values[i] = process(values[i])
            out.append(values)
        return out


def _driver_insert(conn: Connection, stmt: Any, keys: tuple[str, ...]) -> _DriverInsert | None:
    """The insert as SQLite's driver takes it (qmark parameters in the compiled order, values through
    the same bind processors SQLAlchemy would apply); None on any other database."""
    cache_key = (stmt, conn.dialect.name, keys)
    if cache_key not in _DRIVER_SQL:
        found = None
        if conn.dialect.name == "sqlite" and conn.dialect.paramstyle == "qmark" and isinstance(stmt, Insert):
            compiled = stmt.compile(dialect=conn.dialect, column_keys=list(keys))
            order = tuple(compiled.positiontup or ())
            if order and sorted(order) == sorted(keys):
                bound = compiled._bind_processors
                procs = tuple((i, bound[k]) for i, k in enumerate(order) if bound.get(k) is not None)
                found = _DriverInsert(compiled.string, itemgetter(*order), len(order) == 1, procs)
        _DRIVER_SQL[cache_key] = found
    return _DRIVER_SQL[cache_key]


def _insert(conn: Connection, stmt: Any, rows: list[dict[str, Any]]) -> None:
    first = rows[0].keys()
    if all(row.keys() == first for row in rows):
        groups = {tuple(first): rows}
    else:  # an executemany takes the columns of its first row: one per set of columns
        groups = {}
        for row in rows:
            groups.setdefault(tuple(sorted(row)), []).append(row)
    for keys, group in groups.items():
        driver = _driver_insert(conn, stmt, keys)
        if driver is None:
            conn.execute(stmt, group)
        else:  # the driver connection's transaction is the SQLAlchemy connection's
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.executemany(driver.sql, driver.params(group))


def _apply(conn: Connection, works: list[Work]) -> list[Any]:
    merged: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
    for work in works:
        if isinstance(work, Rows):
            for stmt, rows in work.inserts:
                merged.setdefault(id(stmt), (stmt, []))[1].extend(rows)
    for stmt, rows in merged.values():
        if rows:
            _insert(conn, stmt, rows)
    results = []
    for work in works:
        if isinstance(work, Rows):
            results.append(work.then(conn) if work.then is not None else None)
        else:
            results.append(work(conn))
    return results


class GroupCommitter:
    def __init__(self, engine: Engine, name: str = "group-commit", max_batch: int = 256) -> None:
        self._engine = engine
        self._name = name
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, op: Work) -> asyncio.Future[Any]:
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

    async def run(self, op: Work) -> Any:
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

    def _write(self, batch: list[tuple[Any, asyncio.Future[Any], Work]]) -> None:
        outcomes: list[tuple[bool, Any]]
        try:
            with self._engine.begin() as conn:
                outcomes = [(True, r) for r in _apply(conn, [work for _, _, work in batch])]
        except Exception as error:
            if len(batch) == 1:
                outcomes = [(False, error)]
            else:  # find the failing operation: each alone in its own transaction
                outcomes = []
                for _, _, work in batch:
                    try:
                        with self._engine.begin() as conn:
                            outcomes.append((True, _apply(conn, [work])[0]))
                    except Exception as exc:
                        outcomes.append((False, exc))
        by_loop: dict[Any, list[tuple[asyncio.Future[Any], tuple[bool, Any]]]] = {}
        for (loop, future, _), outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, settled in by_loop.items():  # one wake-up of the loop per batch
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(settled: list[tuple[asyncio.Future[Any], tuple[bool, Any]]]) -> None:
    for future, (ok, value) in settled:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
