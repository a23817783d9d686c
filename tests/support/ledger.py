"""Reading a test server's ledger rows straight from its SQLite database, once they are flushed."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tests.support.server import ServerProcess


def rows_where(server: ServerProcess, where: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The ledger rows matching a SQL condition; waits (polling) until there is at least one."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(server.data_dir / "infergate.db") as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(f"SELECT * FROM usage_records WHERE {where}")]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def ledger_row(server: ServerProcess, request_id: str, timeout: float = 10) -> dict[str, Any]:
    """The one ledger row of a request."""
    rows = rows_where(server, f"request_id = '{request_id}'", timeout)  # ids are ours: req_ + hex
    if not rows:
        raise AssertionError(f"no ledger row for {request_id}")
    assert len(rows) == 1
    return rows[0]
