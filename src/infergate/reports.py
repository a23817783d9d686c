"""Usage reports over the ledger, shared by GET /v2/gen-ai/usage and `infergate usage`."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from infergate.errors import InvalidRequest
from infergate.storage.ledger import GroupBy, LedgerRepository

GROUPS = ("key", "model", "day")
COUNTS = (
    "requests",
    "failed_requests",
    "estimated_requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cost_nano_usd",
)


# The times a report can name: the epoch up to the end of year 9999 (what datetime can show).
MIN_MS = 0
MAX_MS = 253_402_300_799_999
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(value: str | None, default_ms: int, name: str) -> int:
    """ISO 8601 date or datetime (UTC when no zone), or epoch seconds, from 1970 to year 9999."""
    if value is None or value == "":
        return default_ms
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds):  # float() reads "inf" and "nan" too
            raise _bad_time(name, value)
        ms = seconds * 1000
    else:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _bad_time(name, value) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ms = (parsed - EPOCH) // timedelta(milliseconds=1)  # exact, for any year datetime takes
    if not MIN_MS <= ms < MAX_MS + 1:  # 1e308 seconds is a finite float but infinite milliseconds
        raise InvalidRequest(
            f"{name}: {_shown(value)} is out of range (1970-01-01 to 9999-12-31, or epoch seconds "
            f"0 to {MAX_MS // 1000})",
            param=name,
        )
    return int(ms)  # whole milliseconds, as the ledger stores them


def _bad_time(name: str, value: str) -> InvalidRequest:
    return InvalidRequest(
        f"{name}: expected an ISO 8601 time or epoch seconds, got {_shown(value)}", param=name
    )


def _shown(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:64] + "...")


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _money(row: dict[str, Any]) -> dict[str, Any]:
    row["cost_micro_usd"] = row["cost_nano_usd"] / 1000
    row["cost_usd"] = row["cost_nano_usd"] / 1e9
    return row


def build_report(repo: LedgerRepository, start: str | None, end: str | None, group_by: str) -> dict[str, Any]:
    if group_by not in GROUPS:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
    now = int(time.time() * 1000)
    end_ms = parse_time(end, now + 1, "end")
    start_ms = parse_time(start, end_ms - 30 * 86_400_000, "start")
    if start_ms >= end_ms:
        raise InvalidRequest("start must be before end", param="start")
    group: GroupBy = group_by  # type: ignore[assignment]
    rows = repo.report(start_ms, end_ms, group)
    for row in rows:
        if group_by == "day":
            row["group"] = iso_ms(row["group"])[:10]
        _money(row)
    totals: dict[str, Any] = {"group": None, **{k: sum(r[k] for r in rows) for k in COUNTS}}
    return {
        "start": iso_ms(start_ms),
        "end": iso_ms(end_ms),
        "group_by": group_by,
        "usage": rows,
        "totals": _money(totals),
    }


TABLE_COLUMNS = (
    ("requests", "requests"),
    ("failed", "failed_requests"),
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache read", "cache_read_tokens"),
    ("cache write 5m", "cache_write_5m_tokens"),
    ("cache write 1h", "cache_write_1h_tokens"),
    ("cost USD", "cost_usd"),
    ("estimated", "estimated_requests"),
)


def _cells(label: str, row: dict[str, Any]) -> list[str]:
    return [label] + [f"{row[k]:.6f}" if k == "cost_usd" else str(row[k]) for _, k in TABLE_COLUMNS]


def render_table(report: dict[str, Any]) -> str:
    """Plain text table for the CLI: one column per billed token class (input is the uncached part)."""
    by_key = report["group_by"] == "key"
    head = [report["group_by"]] + [title for title, _ in TABLE_COLUMNS]
    lines = [
        _cells(str(r.get("key_name") or r["group"]) if by_key else str(r["group"]), r)
        for r in report["usage"]
    ]
    lines.append(_cells("TOTAL", report["totals"]))
    widths = [max(len(head[i]), *(len(row[i]) for row in lines)) for i in range(len(head))]
    out = [
        f"usage {report['start']} .. {report['end']}",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    return "\n".join(out)
