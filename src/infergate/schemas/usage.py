"""GET /v2/gen-ai/usage: the ledger summed over a time range, grouped by key, model or day."""

from __future__ import annotations

from pydantic import BaseModel


class UsageRow(BaseModel):
    group: str | int | None
    key_name: str | None = None
    requests: int
    failed_requests: int
    estimated_requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cost_nano_usd: int
    cost_micro_usd: float
    cost_usd: float


class UsageReport(BaseModel):
    start: str
    end: str
    group_by: str
    usage: list[UsageRow]
    totals: UsageRow
