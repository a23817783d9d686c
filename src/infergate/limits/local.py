"""The in-process limiter: token buckets, in-flight counts, reservations and the month's spend.

Everything here is synchronous: a check and its reservation happen with no `await` between them,
so on one event loop they are atomic. Used alone when no Redis is configured, and as the fallback
(per-process limits) while Redis is unreachable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from infergate.limits.model import (
    REFUSED_BUDGET,
    REFUSED_CONCURRENCY,
    REFUSED_RPM,
    REFUSED_TPM,
    KeyLimits,
    Need,
    Verdict,
)

WINDOW = 60.0  # seconds a full bucket takes to refill: the "per minute" of rpm and tpm


@dataclass(slots=True)
class Bucket:
    level: float
    stamp: float

    def refill(self, capacity: int, now: float) -> float:
        self.level = min(float(capacity), self.level + (now - self.stamp) * capacity / WINDOW)
        self.stamp = now
        return self.level


@dataclass(slots=True)
class KeyState:
    requests: Bucket | None = None
    tokens: Bucket | None = None
    in_flight: int = 0
    reserved_nano: int = 0
    month: str = ""
    spent_nano: int | None = None  # None: not read from the ledger yet (this month)


@dataclass(slots=True)
class LocalReservation:
    key_uuid: str
    need: Need
    state: KeyState = field(repr=False)


def _bucket(existing: Bucket | None, capacity: int, now: float) -> Bucket:
    if existing is None:
        return Bucket(float(capacity), now)  # a new limit starts with a full bucket
    existing.refill(capacity, now)
    return existing


class LocalLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.keys: dict[str, KeyState] = {}

    def reset(self) -> None:
        """Forget everything (the fallback starts afresh from the ledger at each Redis outage)."""
        self.keys.clear()

    def needs_spend(self, key_uuid: str, month: str) -> bool:
        state = self.keys.get(key_uuid)
        return state is None or state.month != month or state.spent_nano is None

    def seed_spend(self, key_uuid: str, month: str, spent_nano: int) -> None:
        state = self.keys.setdefault(key_uuid, KeyState())
        if state.month != month or state.spent_nano is None:
            state.month, state.spent_nano = month, spent_nano

    def reserved_nano(self, key_uuid: str) -> int:
        state = self.keys.get(key_uuid)
        return state.reserved_nano if state else 0

    def try_admit(
        self, key_uuid: str, limits: KeyLimits, need: Need, month: str, wall: float
    ) -> tuple[Verdict, LocalReservation | None]:
        """Check every limit, then reserve; nothing is taken from a refused request."""
        state = self.keys.setdefault(key_uuid, KeyState())
        now = self.clock()
        verdict = Verdict(None)
        requests = tokens = None
        if limits.rpm is not None:
            requests = state.requests = _bucket(state.requests, limits.rpm, now)
        if limits.tpm is not None:
            tokens = state.tokens = _bucket(state.tokens, limits.tpm, now)
        budget = limits.budget_nano
        spent = (state.spent_nano or 0) if state.month == month else 0
        if limits.max_concurrency is not None and state.in_flight >= limits.max_concurrency:
            verdict.refused, verdict.retry_after = REFUSED_CONCURRENCY, 1.0
        elif requests is not None and requests.level < 1:
            verdict.refused = REFUSED_RPM
            verdict.retry_after = (1 - requests.level) * WINDOW / limits.rpm  # type: ignore[operator]
        elif tokens is not None and tokens.level < need.tokens:
            verdict.refused = REFUSED_TPM
            verdict.retry_after = (need.tokens - tokens.level) * WINDOW / limits.tpm  # type: ignore[operator]
        elif budget is not None and spent + state.reserved_nano + need.cost_nano > budget:
            verdict.refused = REFUSED_BUDGET
        reservation = None
        if verdict.refused is None:
            if requests is not None:
                requests.level -= 1
            if tokens is not None:
                tokens.level -= need.tokens
            state.in_flight += 1
            state.reserved_nano += need.cost_nano
            reservation = LocalReservation(key_uuid, need, state)
        if requests is not None:
            verdict.requests_remaining = max(0, math.floor(requests.level))
            verdict.requests_reset = (limits.rpm - requests.level) * WINDOW / limits.rpm  # type: ignore[operator]
        if tokens is not None:
            verdict.tokens_remaining = max(0, math.floor(tokens.level))
            verdict.tokens_reset = (limits.tpm - tokens.level) * WINDOW / limits.tpm  # type: ignore[operator]
        verdict.spent_nano, verdict.reserved_nano = spent, state.reserved_nano
        return verdict, reservation

    def settle(self, reservation: LocalReservation, cost_nano: int, tokens: int | None, month: str) -> None:
        """The request ended: free its slot, turn its reservation into its real cost, give back the
        tokens it did not use (a request billed by estimate keeps them: `tokens` None)."""
        state = reservation.state
        state.in_flight = max(0, state.in_flight - 1)
        state.reserved_nano = max(0, state.reserved_nano - reservation.need.cost_nano)
        if state.month == month and state.spent_nano is not None:
            state.spent_nano += cost_nano
        if state.tokens is not None and tokens is not None and tokens < reservation.need.tokens:
            state.tokens.level += reservation.need.tokens - tokens  # capped at the next refill
