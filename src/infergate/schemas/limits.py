"""Per-key limits (/v2/gen-ai/models/api_keys/{uuid}/limits): the documented shapes.

Bodies are checked by `infergate.limits.KeyLimits` (one set of rules for the API, CLI and panel);
these models document them in the OpenAPI schema.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from infergate.limits.model import MAX_BUDGET_USD, MAX_RATE


class KeyLimitsBody(BaseModel):
    """Every field null (or missing) means no limit of that kind."""

    model_config = ConfigDict(strict=True, extra="forbid")
    rpm: int | None = Field(None, ge=1, le=MAX_RATE, description="requests per minute (token bucket)")
    tpm: int | None = Field(
        None,
        ge=1,
        le=MAX_RATE,
        description="tokens per minute: prompt plus max_tokens, reserved at admission",
    )
    max_concurrency: int | None = Field(None, ge=1, le=MAX_RATE, description="requests in flight at once")
    monthly_budget_usd: float | None = Field(
        None, ge=0, le=MAX_BUDGET_USD, description="hard cap on this calendar month's (UTC) cost"
    )


class LimitsUsage(BaseModel):
    month_cost_usd: float = Field(description="this month's cost in the ledger")
    reserved_usd: float = Field(description="largest possible cost of the key's requests in flight")


class KeyLimitsResponse(BaseModel):
    limits: KeyLimitsBody
    usage: LimitsUsage
