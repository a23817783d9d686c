"""Group commit's inserts on a real SQLite file: rows go to the driver's executemany with the
same bind processing SQLAlchemy applies (a Boolean reads back as a bool), rows of one statement
with different columns fall back to SQLAlchemy, and response ids grow with time (the store's
indexes take appends)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, create_engine, insert, select

from infergate.responses.translate import secret_id
from infergate.storage.group_commit import GroupCommitter, Rows

meta = MetaData()
things = Table(
    "things",
    meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(32), nullable=False),
    Column("flag", Boolean, nullable=False),
    Column("note", String(32), nullable=True),
)
INSERT_THING = insert(things)


def test_rows_are_written_with_their_types_and_mixed_columns_fall_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'gc.db'}")
    meta.create_all(engine)
    writer = GroupCommitter(engine)

    async def go() -> None:
        plain = [{"name": f"n{i}", "flag": i % 2 == 0} for i in range(40)]
        mixed = [{"name": "a", "flag": True}, {"name": "b", "flag": False, "note": "x"}]
        await asyncio.gather(
            *(writer.run(Rows([(INSERT_THING, [row])])) for row in plain),
            writer.run(Rows([(INSERT_THING, mixed)])),
        )
        await asyncio.to_thread(writer.close)

    asyncio.run(go())
    with engine.connect() as conn:
        rows = {r.name: (r.flag, r.note) for r in conn.execute(select(things))}
    engine.dispose()
    assert len(rows) == 42
    assert rows["n0"] == (True, None) and rows["n1"] == (False, None)
    assert rows["a"] == (True, None) and rows["b"] == (False, "x")
    assert all(isinstance(flag, bool) for flag, _ in rows.values())


def test_response_ids_grow_with_time_and_stay_unguessable() -> None:
    first = secret_id("resp")
    deadline = time.monotonic() + 5
    while time.time_ns() // 1_000_000 == int(first[5:17], 16) and time.monotonic() < deadline:
        pass  # the next millisecond
    later = secret_id("resp")
    assert first < later
    assert len(first) == len(later) == 53 and first.startswith("resp_")
    assert len({secret_id("resp")[17:] for _ in range(1000)}) == 1000  # 144 random bits each
