"""The ledger's spill file in the data dir: rows the database could not take, kept on disk.

`ledger-spill.jsonl` holds one JSON row per line. Appends and replays of every process on the
data dir (`serve --workers N`) take turns under a file lock (`ledger-spill.lock`), so the file is
replayed exactly once. A replay first renames it to `ledger-spill.replaying.jsonl` and deletes
that only after its rows are inserted: one that dies midway is redone, and since rows are keyed
by request id, redoing it counts nothing twice. Lines that are not rows (torn by a crash, corrupt)
are kept in `ledger-spill.rejected.jsonl` for a human to look at, never retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("infergate.ledger")

Row = dict[str, Any]


def dumps(row: Row) -> bytes:
    return orjson.dumps(row, default=str)


class SpillFile:
    def __init__(self, path: Path) -> None:
        stem = path.name.removesuffix(".jsonl")
        self.path = path
        self.replaying_path = path.with_name(f"{stem}.replaying.jsonl")
        self.rejected_path = path.with_name(f"{stem}.rejected.jsonl")
        self.lock_path = path.with_name(f"{stem}.lock")

    def has_rows(self) -> bool:
        return self.path.exists() or self.replaying_path.exists()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Spill appends and replays of every process on this data dir, one at a time."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, rows: list[Row]) -> None:
        if rows:
            with self.lock():
                _append(self.path, [dumps(r) for r in rows])

    def reject(self, lines: list[bytes]) -> None:
        _append(self.rejected_path, lines)

    def replay(self, insert: Callable[[list[Row]], None], batch: int) -> int:
        """Insert the spilled rows with `insert`, `batch` at a time; how many rows were replayed.
        An error from `insert` leaves the rows in place for the next replay."""
        replayed = 0
        with self.lock():
            if self.replaying_path.exists():  # a replay that crashed or failed midway
                replayed += self._replay_file(insert, batch)
            if self.path.exists():
                os.replace(self.path, self.replaying_path)
                replayed += self._replay_file(insert, batch)
        return replayed

    def _replay_file(self, insert: Callable[[list[Row]], None], batch: int) -> int:
        path = self.replaying_path
        rows: list[Row] = []
        bad: list[bytes] = []
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("request_id"), str):
                rows.append(row)
            else:
                log.warning("%s line %d is corrupt (torn or not a row); set aside", path.name, number)
                bad.append(line)
        for start in range(0, len(rows), batch):
            insert(rows[start : start + batch])
        if bad:
            self.reject(bad)
            log.warning("%d corrupt spill lines kept in %s", len(bad), self.rejected_path)
        path.unlink()
        log.info("replayed %d spilled ledger rows from %s", len(rows), path.name)
        return len(rows)


def _append(path: Path, lines: list[bytes]) -> None:
    """Append whole lines and fsync: what was spilled survives a crash right after."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)  # RDWR: to read the tail
    try:
        size = os.fstat(fd).st_size
        data = b"".join(line + b"\n" for line in lines)
        # a line torn by a crash mid-append must not swallow the first row written after it
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
