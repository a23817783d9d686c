"""Per-key limits: the values, what one request needs, and the verdict with its OpenAI headers.

Rates are token buckets, as OpenAI's are: a key with `rpm = 60` may send 60 requests at once, then
one a second; `x-ratelimit-reset-requests` is the time until the bucket is full again. The budget is
hard: this month's settled cost plus every open reservation never passes it.
"""

from __future__ import annotations

import math
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from infergate.errors import InvalidRequest, RateLimited

NANO_PER_USD = 1_000_000_000
MAX_RATE = 1_000_000_000  # rpm, tpm and concurrency above this are typos, not limits
MAX_BUDGET_USD = 1_000_000_000.0
LIMIT_FIELDS = ("rpm", "tpm", "max_concurrency", "monthly_budget_usd")

# The scope["state"] of the HTTP request being served, set by GatewayMiddleware: admission writes the
# rate-limit headers there and the middleware adds them to the answer. None in a job worker.
HTTP_STATE: ContextVar[dict[str, Any] | None] = ContextVar("infergate_http_state", default=None)
HEADERS_STATE = "ratelimit_headers"


def _count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name}: must be an integer or null", param=name)
    if not 1 <= value <= MAX_RATE:
        raise InvalidRequest(f"{name}: must be between 1 and {MAX_RATE}, or null for no limit", param=name)
    return value


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's limits; None means no limit. Validated on construction (InvalidRequest names the field)."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    monthly_budget_usd: float | None = None
    budget_nano: int | None = field(default=None, init=False, repr=False, compare=False)  # nano-USD

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_concurrency"):
            _count(name, getattr(self, name))
        usd = self.monthly_budget_usd
        if usd is not None:
            if isinstance(usd, bool) or not isinstance(usd, int | float):
                raise InvalidRequest(
                    "monthly_budget_usd: must be a number or null", param="monthly_budget_usd"
                )
            if not (math.isfinite(usd) and 0 <= usd <= MAX_BUDGET_USD):
                raise InvalidRequest(
                    f"monthly_budget_usd: must be between 0 and {MAX_BUDGET_USD:.0f}, or null for no limit",
                    param="monthly_budget_usd",
                )
            object.__setattr__(self, "monthly_budget_usd", float(usd))
        nano = None if usd is None else int((Decimal(repr(float(usd))) * NANO_PER_USD).to_integral_value())
        object.__setattr__(self, "budget_nano", nano)  # computed once: read on every admission

    @classmethod
    def from_dict(cls, body: Any) -> KeyLimits:
        """The API's body: the four fields (a missing one is null); anything else is an error."""
        if not isinstance(body, dict):
            raise InvalidRequest("Request body must be a JSON object with " + ", ".join(LIMIT_FIELDS))
        for name in body:
            if name not in LIMIT_FIELDS:
                raise InvalidRequest(
                    f"{name}: unknown field; the limits are {', '.join(LIMIT_FIELDS)}", param=str(name)
                )
        return cls(**{name: body.get(name) for name in LIMIT_FIELDS})

    @classmethod
    def from_nano(
        cls, rpm: int | None, tpm: int | None, conc: int | None, budget_nano: int | None
    ) -> KeyLimits:
        budget = None if budget_nano is None else budget_nano / NANO_PER_USD
        return cls(rpm, tpm, conc, budget)

    @property
    def unlimited(self) -> bool:
        return (
            self.rpm is None
            and self.tpm is None
            and self.max_concurrency is None
            and self.budget_nano is None
        )

    @property
    def counts_prompt(self) -> bool:
        """Only a budget or a token rate needs the prompt counted (unlimited keys pay nothing for it)."""
        return self.tpm is not None or self.monthly_budget_usd is not None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in LIMIT_FIELDS}


@dataclass(frozen=True, slots=True)
class LimitsStatus:
    """The answer of GET/PUT .../limits (and of `infergate keys limits`)."""

    limits: KeyLimits
    month_cost_nano: int
    reserved_nano: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "limits": self.limits.to_dict(),
            "usage": {
                "month_cost_usd": self.month_cost_nano / NANO_PER_USD,
                "reserved_usd": self.reserved_nano / NANO_PER_USD,
            },
        }


@dataclass(frozen=True, slots=True)
class Need:
    """What one request reserves: its largest possible cost and token count."""

    cost_nano: int
    tokens: int


# Why a request was refused (None: admitted).
REFUSED_RPM, REFUSED_TPM, REFUSED_CONCURRENCY, REFUSED_BUDGET = "rpm", "tpm", "concurrency", "budget"


@dataclass(slots=True)
class Verdict:
    refused: str | None
    retry_after: float = 0.0  # seconds
    requests_remaining: int = 0
    requests_reset: float = 0.0  # seconds until the request bucket is full
    tokens_remaining: int = 0
    tokens_reset: float = 0.0
    spent_nano: int = 0
    reserved_nano: int = 0


_month: tuple[float, float, str] = (0.0, 0.0, "")  # [start, end) of the last month asked for, its name


def month_of(now: float) -> str:
    """The UTC month a cost counts in, as the ledger's created_ms falls (e.g. '2026-11')."""
    global _month
    start, end, name = _month
    if start <= now < end:
        return name
    name = datetime.fromtimestamp(now, UTC).strftime("%Y-%m")
    start = month_start_ms(name) / 1000
    _month = (start, now + seconds_to_next_month(now), name)
    return name


def month_start_ms(month: str) -> int:
    year, mon = (int(p) for p in month.split("-"))
    return int(datetime(year, mon, 1, tzinfo=UTC).timestamp() * 1000)


def seconds_to_next_month(now: float) -> float:
    t = datetime.fromtimestamp(now, UTC)
    nxt = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)
    return nxt.timestamp() - now


def duration(seconds: float) -> str:
    """OpenAI's reset format: '120ms', '1s', '8.64s', '6m0s', '1h2m3s'."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


def rate_headers(limits: KeyLimits, verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers for the limited dimensions of this key."""
    headers: list[tuple[bytes, bytes]] = []
    if limits.rpm is not None:
        headers += [
            (b"x-ratelimit-limit-requests", str(limits.rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(verdict.requests_remaining).encode()),
            (b"x-ratelimit-reset-requests", duration(verdict.requests_reset).encode()),
        ]
    if limits.tpm is not None:
        headers += [
            (b"x-ratelimit-limit-tokens", str(limits.tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(verdict.tokens_remaining).encode()),
            (b"x-ratelimit-reset-tokens", duration(verdict.tokens_reset).encode()),
        ]
    return headers


def _usd(nano: int) -> str:
    return f"${nano / NANO_PER_USD:.6f}".rstrip("0").rstrip(".")


def refusal(limits: KeyLimits, need: Need, verdict: Verdict) -> RateLimited:
    """The 429 of a refused request: which limit, why, and when to come back (Retry-After)."""
    retry = max(1, math.ceil(verdict.retry_after))
    code = "rate_limit_exceeded"
    param = None
    if verdict.refused == REFUSED_RPM:
        message = f"Rate limit reached for this key: {limits.rpm} requests per minute. Retry after {retry} s."
    elif verdict.refused == REFUSED_CONCURRENCY:
        message = f"Too many requests in flight for this key: at most {limits.max_concurrency} at a time."
    elif verdict.refused == REFUSED_BUDGET:
        code = "insufficient_quota"
        message = (
            f"This key's monthly budget of {_usd(limits.budget_nano or 0)} would be exceeded: "
            f"{_usd(verdict.spent_nano)} spent this month, {_usd(verdict.reserved_nano)} reserved by "
            f"requests in flight, and this request may cost up to {_usd(need.cost_nano)} (prompt plus "
            "max_tokens)."
        )
        # reservations in flight may settle below their maximum; else only the next month helps
        retry = 1 if verdict.reserved_nano else max(1, math.ceil(seconds_to_next_month(time.time())))
    elif limits.tpm is not None and need.tokens > limits.tpm:
        param = "max_tokens"
        retry = 60
        message = (
            f"This request may use {need.tokens} tokens (prompt plus max_tokens, or the model's context "
            f"without it), more than this key's limit of {limits.tpm} tokens per minute: lower max_tokens."
        )
    else:
        message = (
            f"Rate limit reached for this key: {limits.tpm} tokens per minute; this request may use "
            f"{need.tokens}. Retry after {retry} s."
        )
    return RateLimited(message, param=param, code=code, headers={"Retry-After": str(retry)})
