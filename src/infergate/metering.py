"""Bill exactly once, whatever happens: the one place every endpoint charges a request.

An endpoint opens a `Meter` when it admits a request and closes it with `settle(status)` on
every way out: success, a validation or upstream failure, a timeout, a client that went away.
The first `settle` writes one ledger entry; later calls do nothing, so a `finally` that settles
again can never bill twice.

What is billed is the best count known at that moment:
1. the backend's final usage, when it reported one;
2. otherwise what the backend consumed so far (`RequestContext.usage`, kept current by engines
   that count as they go, like the embedded llama.cpp engine), cache writes included;
3. otherwise, for a backend that could have worked (an upstream that timed out, broke off or
   answered a client that left), an estimate: the prompt and the text seen so far, counted with
   the local tokenizer and marked estimated;
4. otherwise nothing (the request was refused before any work: 4xx, unreachable upstream).

Counting a large prompt takes a while, so estimates are made off the event loop: in the ledger
writer's thread when nobody waits for the number, in a worker thread when the answer needs it.
Pricing is also done in the writer's thread; the request path only appends to a list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from infergate.catalog import ModelSpec
from infergate.errors import InfergateError
from infergate.observability import LEDGER_PENDING, count_billed_tokens
from infergate.tokens import count_tokens
from infergate.usage import Usage, now_ms

log = logging.getLogger("infergate.metering")

CLIENT_GONE_STATUS = 499
# Failures after which a backend may have done work it did not report (so it is estimated).
WORK_MAY_HAVE_BEEN_DONE = frozenset({CLIENT_GONE_STATUS, 500, 502, 504})
# Below this many characters counting on the event loop is cheaper than a thread hop.
INLINE_COUNT_CHARS = 16_384


class LedgerSink(Protocol):
    def record(self, entry: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Charge:
    """Who pays for a request and for what: the model (its prices), the key, the endpoint."""

    spec: ModelSpec
    request_id: str
    key_uuid: str | None
    endpoint: str
    started: float = field(default_factory=time.perf_counter)  # perf_counter at admission


def status_of(exc: BaseException) -> int:
    """The HTTP status a failure is billed (and answered) with."""
    if isinstance(exc, InfergateError):
        return exc.status
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return CLIENT_GONE_STATUS
    return 500


class Meter:
    """One request's bill. `usage` is live: pass it to the backend (`RequestContext.usage`)."""

    def __init__(
        self,
        ledger: LedgerSink,
        charge: Charge,
        *,
        prompt_texts: Callable[[], list[str]] | None = None,
        prompt_overhead: Callable[[int], int] | None = None,
        live_usage: bool = False,
    ) -> None:
        self.ledger = ledger
        self.charge = charge
        self.usage = Usage()
        # For estimates: the prompt's texts (read lazily, they may be megabytes) and the framing
        # tokens added per text; the output texts seen so far (streamed deltas) go in `output`.
        self._prompt_texts = prompt_texts
        self._prompt_overhead = prompt_overhead or (lambda _n: 0)
        self.output: list[str] = []
        self.live_usage = live_usage  # the backend counts as it goes: never estimate for it
        self.settled = False
        # Set by the key limiter at admission: frees the request's slot and settles its reservation
        # to the billed usage (None: billed later by an estimate).
        self.on_settle: Callable[[Usage | None], None] | None = None

    # -- estimates ----------------------------------------------------------------------------
    def prompt(self) -> tuple[list[str], int]:
        """The prompt's texts and the framing tokens around them (the key limiter's reservation)."""
        texts = self._prompt_texts() if self._prompt_texts else []
        return texts, self._prompt_overhead(len(texts))

    def estimate_now(self, prompt_texts: list[str] | None = None) -> Usage:
        """Count the prompt and the output seen so far (synchronous: call off the loop)."""
        if prompt_texts is None:
            prompt_texts = self._prompt_texts() if self._prompt_texts else []
        input_tokens = sum(count_tokens(t) for t in prompt_texts) + self._prompt_overhead(len(prompt_texts))
        return Usage(
            input_tokens=input_tokens,
            output_tokens=count_tokens("".join(self.output)),
            estimated=True,
        )

    async def estimate(self) -> Usage:
        """`estimate_now`, in a worker thread when the texts are large."""
        prompt_texts = self._prompt_texts() if self._prompt_texts else []
        size = sum(len(t) for t in self.output) + sum(len(t) for t in prompt_texts)
        if size <= INLINE_COUNT_CHARS:
            return self.estimate_now(prompt_texts)
        return await asyncio.to_thread(self.estimate_now, prompt_texts)

    # -- billing ------------------------------------------------------------------------------
    def settle(self, status: int, final: Usage | None = None) -> None:
        """Bill the request once; calls after the first do nothing."""
        if self.settled:
            return
        self.settled = True
        latency_ms = (time.perf_counter() - self.charge.started) * 1000
        usage = final
        if usage is None and _consumed(self.usage):
            usage = self.usage
        estimate = None
        if usage is None:
            if not self.live_usage and status in WORK_MAY_HAVE_BEEN_DONE | {200}:
                estimate = self.estimate_now  # run later, in the ledger writer's thread
            else:
                usage = Usage()
        if self.on_settle is not None:
            self.on_settle(usage)
        entry = MeteredEntry(self.charge, usage, estimate, status, latency_ms, now_ms())
        self.ledger.record(entry)
        LEDGER_PENDING.inc()
        if usage is not None:
            entry.count_tokens()

    def fail(self, exc: BaseException) -> None:
        self.settle(status_of(exc))


def _consumed(usage: Usage) -> bool:
    return bool(
        usage.input_tokens
        or usage.output_tokens
        or usage.cache_read_tokens
        or usage.cache_write_5m_tokens
        or usage.cache_write_1h_tokens
    )


@dataclass(slots=True)
class MeteredEntry:
    """A ledger entry whose row (estimate, price) is built in the ledger writer's thread."""

    charge: Charge
    usage: Usage | None
    estimate: Callable[[], Usage] | None
    status: int
    latency_ms: float
    created_ms: int

    def count_tokens(self) -> None:
        """infergate_tokens_total, counted as the ledger counts (input = uncached input)."""
        u = self.usage
        assert u is not None
        count_billed_tokens(
            self.charge.spec.id,
            input=u.uncached_input_tokens,
            output=u.output_tokens,
            cache_read=u.cache_read_tokens,
            cache_write=u.cache_write_5m_tokens + u.cache_write_1h_tokens,
        )

    def row(self) -> dict[str, Any]:
        if self.usage is None:
            assert self.estimate is not None
            self.usage = self.estimate()
            self.count_tokens()
        u = self.usage
        c = self.charge
        return {
            "request_id": c.request_id,
            "key_uuid": c.key_uuid,
            "model": c.spec.id,
            "endpoint": c.endpoint,
            "input_tokens": u.uncached_input_tokens,
            "output_tokens": u.output_tokens,
            "cache_read_tokens": u.cache_read_tokens,
            "cache_write_5m_tokens": u.cache_write_5m_tokens,
            "cache_write_1h_tokens": u.cache_write_1h_tokens,
            "cost_nano_usd": u.cost_nano_usd(c.spec),
            "status": self.status,
            "latency_ms": round(self.latency_ms, 3),
            "estimated": u.estimated,
            "created_ms": self.created_ms,
        }
