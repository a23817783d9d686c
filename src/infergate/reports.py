"""Usage reports over the ledger, shared by GET /v2/gen-ai/usage and `infergate usage`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
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


def parse_time(value: str | None, default_ms: int, name: str) -> int:
    """ISO 8601 date or datetime (UTC when no zone), or epoch seconds."""
    if value is None or value == "":
        return default_ms
    try:
        return int(float(value) * 1000)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{name}: expected an ISO 8601 time or epoch seconds, got {value!r}", param=name
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


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


def render_table(report: dict[str, Any]) -> str:
    """Plain text table for the CLI."""
    head = [
        report["group_by"],
        "requests",
        "failed",
        "input",
        "output",
        "cache read",
        "cache write",
        "cost USD",
        "estimated",
    ]
    lines = [
        [
            str(r.get("key_name") or r["group"]) if report["group_by"] == "key" else str(r["group"]),
            str(r["requests"]),
            str(r["failed_requests"]),
            str(r["input_tokens"]),
            str(r["output_tokens"]),
            str(r["cache_read_tokens"]),
            str(r["cache_write_5m_tokens"] + r["cache_write_1h_tokens"]),
            f"{r['cost_usd']:.6f}",
            str(r["estimated_requests"]),
        ]
        for r in report["usage"]
    ]
    t = report["totals"]
    lines.append(
        [
            "TOTAL",
            str(t["requests"]),
            str(t["failed_requests"]),
            str(t["input_tokens"]),
            str(t["output_tokens"]),
            str(t["cache_read_tokens"]),
            str(t["cache_write_5m_tokens"] + t["cache_write_1h_tokens"]),
            f"{t['cost_usd']:.6f}",
            str(t["estimated_requests"]),
        ]
    )
    widths = [max(len(head[i]), *(len(row[i]) for row in lines)) for i in range(len(head))]
    out = [
        f"usage {report['start']} .. {report['end']}",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    return "\n".join(out)
