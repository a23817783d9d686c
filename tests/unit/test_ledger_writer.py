"""The ledger writer on a real SQLite database whose writes can be made to fail (or hang): retry
with backoff (on an injected clock, no test waits it out), the pending bound that spills, close()
during a failing or hung write, and crash-safe, idempotent replay that sets corrupt lines aside."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

from infergate.catalog import ModelSpec
from infergate.config import normalize_database_url
from infergate.metering import Charge, MeteredEntry
from infergate.storage.db import open_database, usage_records
from infergate.storage.ledger import LedgerRepository
from infergate.storage.ledger_writer import LedgerWriter
from infergate.storage.spill import SpillFile
from infergate.usage import Usage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Database:
    """The real ledger table, with a switch that makes writes fail as an unreachable server does,
    and a gate that holds a write in flight (a hung connection) until released."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.repo = LedgerRepository(engine)
        self.down = False
        self.calls = 0
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.fail_after: int | None = None  # writes that succeed before the database goes down

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.down = True
            self.fail_after -= 1
        if self.down:
            raise OperationalError(
                "INSERT INTO usage_records ...", {}, sqlite3.OperationalError("unreachable")
            )
        self.repo.insert(rows)

    def request_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(usage_records.c.request_id))]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(usage_records)).scalar_one()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    engine = open_database(normalize_database_url(f"sqlite:///{tmp_path / 'infergate.db'}"))
    yield Database(engine)
    engine.dispose()


MODEL = ModelSpec(id="m", backend="openai", base_url="http://127.0.0.1:9/v1", output_price=1000.0)


def entry(i: int) -> MeteredEntry:
    """A metered request: 10 input tokens (free) and i output tokens at 1 nano-USD each."""
    return MeteredEntry(
        charge=Charge(MODEL, f"req-{i}", None, "chat", started=0.0),
        usage=Usage(input_tokens=10, output_tokens=i),
        estimate=None,
        status=200,
        latency_ms=1.0,
        created_ms=1_700_000_000_000 + i,
    )


def make_writer(db: Database, tmp_path: Path, **kwargs: Any) -> tuple[LedgerWriter, Clock]:
    clock = Clock()
    options = {"flush_interval": 0.01, "clock": clock, **kwargs}
    return LedgerWriter(db.write, tmp_path / "ledger-spill.jsonl", **options), clock


def spill_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def ids(n: int, start: int = 0) -> list[str]:
    return [f"req-{i}" for i in range(start, start + n)]


def test_rows_are_rendered_in_the_writer_thread_and_a_bad_entry_is_dropped_alone(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    threads: list[int] = []

    class Traced:
        def __init__(self, inner: MeteredEntry) -> None:
            self.inner = inner

        def row(self) -> dict[str, Any]:
            threads.append(threading.get_ident())
            return self.inner.row()

    class Broken:
        def row(self) -> dict[str, Any]:
            raise ZeroDivisionError("no row")

    async def run() -> None:
        writer, _ = make_writer(db, tmp_path)
        writer.record(Traced(entry(0)))
        writer.record(Broken())
        writer.record(Traced(entry(1)))
        assert threads == []  # record() only appended
        assert await writer.flush()
        await writer.close()

    asyncio.run(run())
    assert sorted(db.request_ids()) == ids(2)
    assert threads and threading.get_ident() not in threads
    broken = [r for r in caplog.records if "could not be rendered" in r.getMessage()]
    assert len(broken) == 1 and broken[0].exc_info is not None  # logged with its traceback


def test_retries_back_off_exponentially_and_log_once_per_state_change(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="infergate.ledger")

    async def run() -> None:
        writer, clock = make_writer(db, tmp_path, backoff_base=0.5, backoff_max=30.0)
        db.down = True
        for i in range(3):
            writer.record(entry(i))
        await writer.tick()
        assert db.calls == 1 and writer.failing and writer.pending == 3
        expected = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # doubling, capped
        early = 1 / 64  # exact in binary: the clock lands exactly on each retry time
        for n, delay in enumerate(expected):
            clock.now += delay - early
            await writer.tick()
            await writer.tick()
            assert db.calls == n + 1, "retried before its backoff was over"
            clock.now += early
            await writer.tick()
            assert db.calls == n + 2
        db.down = False
        clock.now += 30.0
        await writer.tick()
        assert not writer.failing and writer.pending == 0
        # healthy again: the next rows go at the normal pace, without backoff
        writer.record(entry(3))
        await writer.tick()
        await writer.close()

    asyncio.run(run())
    assert sorted(db.request_ids()) == ids(4)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "retrying with backoff" in errors[0].getMessage()
    recovered = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(recovered) == 1
    # the SQL text and row values never reach the log
    assert not any("INSERT" in r.getMessage() for r in caplog.records)


def test_the_flusher_waits_out_the_backoff_and_never_spins_with_nothing_to_write(
    db: Database, tmp_path: Path
) -> None:
    async def run() -> None:
        writer, clock = make_writer(db, tmp_path, max_pending=2, backoff_base=4.0)
        assert writer.next_wait() == 0.01  # healthy: the flush interval
        db.down = True
        writer.record(entry(0))
        await writer.tick()
        assert writer.next_wait() == 4.0  # rows wait: until the retry
        clock.now += 1.0
        assert writer.next_wait() == 3.0
        clock.now += 5.0
        assert writer.next_wait() == 0.0  # the retry is due
        writer.record(entry(1))
        writer.record(entry(2))
        await writer.tick()  # fails again, and past the bound everything is spilled
        assert writer.pending == 0 and writer.failing
        writer._replay_due = False  # (as if another process had replayed it)
        assert writer.next_wait() == 0.01  # nothing waits for the database: no busy loop
        await writer.close()

    asyncio.run(run())


def test_past_the_bound_pending_rows_go_to_the_spill_file_then_back_after_recovery(
    db: Database, tmp_path: Path
) -> None:
    async def run() -> None:
        writer, clock = make_writer(db, tmp_path, max_pending=10)
        db.down = True
        for i in range(5):
            writer.record(entry(i))
        await writer.tick()
        assert writer.failing and writer.pending == 5
        for i in range(5, 10):
            writer.record(entry(i))
        assert not writer._wakeup.is_set()  # at the bound: kept in memory
        writer.record(entry(10))
        assert writer._wakeup.is_set()  # past it: the flusher wakes to spill, without waiting the backoff
        await writer.tick()
        assert db.calls == 1  # still backing off: no write attempt, only the spill
        assert writer.pending == 0
        assert sorted(orjson.loads(line)["request_id"] for line in spill_lines(writer.spill_path)) == sorted(
            ids(11)
        )
        writer.record(entry(11))
        db.down = False
        clock.now += 1.0
        await writer.tick()  # writes entry 11, then replays the spill
        assert not writer.spill_path.exists() and not writer.replaying_path.exists()
        await writer.close()

    asyncio.run(run())
    assert sorted(db.request_ids()) == sorted(ids(12))


def test_close_during_a_write_that_fails_spills_that_batch(db: Database, tmp_path: Path) -> None:
    async def run() -> None:
        writer, _ = make_writer(db, tmp_path)
        await writer.start()
        db.down = True
        db.gate = threading.Event()
        for i in range(7):
            writer.record(entry(i))
        assert await asyncio.to_thread(db.entered.wait, 10)  # the flusher is writing the batch
        closing = asyncio.create_task(writer.close())
        while writer._task is not None:  # close() has cancelled the flusher mid-write
            await asyncio.sleep(0)
        db.gate.set()  # the write now fails: the database is down
        await closing

    asyncio.run(run())
    spilled = sorted(
        orjson.loads(line)["request_id"] for line in spill_lines(tmp_path / "ledger-spill.jsonl")
    )
    assert spilled == sorted(ids(7))
    assert db.count() == 0
    db.down, db.gate = False, None

    async def restart() -> None:
        writer, _ = make_writer(db, tmp_path)
        await writer.start()
        await writer.close()

    asyncio.run(restart())
    assert sorted(db.request_ids()) == sorted(ids(7))
    assert not (tmp_path / "ledger-spill.jsonl").exists()


def test_close_while_a_write_hangs_spills_and_a_late_commit_is_not_counted_twice(
    db: Database, tmp_path: Path
) -> None:
    async def run() -> None:
        writer, _ = make_writer(db, tmp_path, close_timeout=0.05)
        await writer.start()
        db.gate = threading.Event()
        for i in range(4):
            writer.record(entry(i))
        assert await asyncio.to_thread(db.entered.wait, 10)
        await writer.close()  # the write still hangs: its rows are spilled

    asyncio.run(run())
    assert len(spill_lines(tmp_path / "ledger-spill.jsonl")) == 4
    db.gate.set()  # the hung write goes through after all
    deadline = time.monotonic() + 30
    while db.count() < 4 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert db.count() == 4
    db.gate = None

    async def restart() -> None:
        writer, _ = make_writer(db, tmp_path)
        await writer.start()
        await writer.close()

    asyncio.run(restart())
    assert sorted(db.request_ids()) == sorted(ids(4))


def test_replay_sets_corrupt_lines_aside_and_starts(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill = tmp_path / "ledger-spill.jsonl"
    good = [orjson.dumps(entry(i).row()) for i in range(3)]
    torn = orjson.dumps(entry(99).row())[:40]
    bad = [torn, b"not json at all", b"[1, 2, 3]", b'{"no": "request id"}']
    spill.write_bytes(b"\n".join([good[0], bad[0], good[1], bad[1], bad[2], bad[3], good[2]]) + b"\n")

    async def run() -> bool:
        writer, _ = make_writer(db, tmp_path)
        await writer.start()
        running = writer._task is not None and not writer._task.done()
        await writer.close()
        return running

    assert asyncio.run(run())
    assert sorted(db.request_ids()) == ids(3)
    assert spill_lines(tmp_path / "ledger-spill.rejected.jsonl") == bad
    assert not spill.exists() and not (tmp_path / "ledger-spill.replaying.jsonl").exists()
    assert sum("corrupt" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) >= 4


def test_a_replay_that_dies_midway_is_redone_without_doubling(db: Database, tmp_path: Path) -> None:
    spill = tmp_path / "ledger-spill.jsonl"
    spill.write_bytes(b"".join(orjson.dumps(entry(i).row()) + b"\n" for i in range(10)))
    db.fail_after = 1  # the first batch of 4 commits, then the database goes away

    async def start_once() -> None:
        writer, _ = make_writer(db, tmp_path, max_batch=4)
        await writer.start()  # never raises: the server starts, the replay is retried later
        await writer.close()

    asyncio.run(start_once())
    assert db.count() == 4
    assert not spill.exists() and (tmp_path / "ledger-spill.replaying.jsonl").exists()
    # meanwhile another shutdown spilled more (one of them a row already written)
    spill.write_bytes(b"".join(orjson.dumps(entry(i).row()) + b"\n" for i in (3, 10, 11)))
    db.down, db.fail_after = False, None
    asyncio.run(start_once())
    assert sorted(db.request_ids()) == sorted(ids(12))
    assert not spill.exists() and not (tmp_path / "ledger-spill.replaying.jsonl").exists()
    # replaying the same rows again changes nothing
    spill.write_bytes(b"".join(orjson.dumps(entry(i).row()) + b"\n" for i in range(12)))
    asyncio.run(start_once())
    assert db.count() == 12


def test_a_row_the_database_refuses_is_set_aside_and_does_not_block_the_others(
    db: Database, tmp_path: Path
) -> None:
    class Poison:
        def row(self) -> dict[str, Any]:
            return {**entry(50).row(), "model": None}  # NOT NULL: the database refuses this row

    async def run() -> LedgerWriter:
        writer, _ = make_writer(db, tmp_path)
        writer.record(entry(0))
        writer.record(Poison())
        writer.record(entry(1))
        assert await writer.flush()
        await writer.close()
        return writer

    writer = asyncio.run(run())
    assert sorted(db.request_ids()) == ids(2)
    rejected = spill_lines(writer.rejected_path)
    assert [orjson.loads(line)["request_id"] for line in rejected] == ["req-50"]


def test_a_torn_tail_left_by_a_crash_does_not_swallow_the_next_spilled_row(
    db: Database, tmp_path: Path
) -> None:
    spill = tmp_path / "ledger-spill.jsonl"
    spill.write_bytes(orjson.dumps(entry(0).row()) + b"\n" + orjson.dumps(entry(1).row())[:30])

    async def spill_two() -> None:
        writer, _ = make_writer(db, tmp_path)
        db.down = True
        writer.record(entry(2))
        writer.record(entry(3))
        await writer.close()

    asyncio.run(spill_two())
    db.down = False

    async def restart() -> None:
        writer, _ = make_writer(db, tmp_path)
        await writer.start()
        await writer.close()

    asyncio.run(restart())
    assert sorted(db.request_ids()) == ["req-0", "req-2", "req-3"]
    assert len(spill_lines(tmp_path / "ledger-spill.rejected.jsonl")) == 1


def test_spill_files_are_private(db: Database, tmp_path: Path) -> None:
    async def run() -> None:
        writer, _ = make_writer(db, tmp_path)
        db.down = True
        writer.record(entry(0))
        await writer.close()

    asyncio.run(run())
    for name in ("ledger-spill.jsonl", "ledger-spill.lock"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_two_replayers_at_once_replay_the_spill_exactly_once(db: Database, tmp_path: Path) -> None:
    """As two `--workers` starting together: the file lock lets one replay; the other finds nothing."""
    path = tmp_path / "ledger-spill.jsonl"
    path.write_bytes(b"".join(orjson.dumps(entry(i).row()) + b"\n" for i in range(50)))
    inserted: list[str] = []
    gate = threading.Barrier(2)

    def insert(rows: list[dict[str, Any]]) -> None:
        inserted.extend(r["request_id"] for r in rows)
        db.repo.insert(rows)

    def replayer(out: list[int]) -> None:
        gate.wait(10)
        out.append(SpillFile(path).replay(insert, 7))

    counts: list[int] = []
    threads = [threading.Thread(target=replayer, args=(counts,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(counts) == [0, 50]
    assert sorted(inserted) == sorted(ids(50))  # each row handed to the database once
    assert db.count() == 50
