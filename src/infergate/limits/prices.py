"""A model's prices as the limiter uses them on the hot path: plain ints when they are whole nano-USD
(the common case: $1 per 1M tokens is 1,000 nano-USD per token), Decimal otherwise. `cost` equals
`Usage.cost_nano_usd` (the ledger's cost) exactly, so Redis's month spend and the ledger never drift."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infergate.catalog import ModelSpec
    from infergate.usage import Usage

CLASSES = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
# Up to this many characters a prompt is reserved as one token per UTF-8 byte: every byte-level BPE
# count is at most that (never under-reserved) and no tokenizer runs on the hot path.
BYTES_BOUND_CHARS = 2048


def _plain(price: Decimal) -> int | Decimal:
    return int(price) if price == price.to_integral_value() else price


class Prices:
    __slots__ = ("cache_read", "cache_write_1h", "cache_write_5m", "input", "output", "spec", "top_input")

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        for name in CLASSES:
            setattr(self, name, _plain(spec.price_nano(name)))
        # a prompt token may be billed as a cache write: reserve at the dearest input price
        self.top_input = max(self.input, self.cache_write_5m, self.cache_write_1h)

    def reserve(self, prompt_tokens: int, output_tokens: int) -> int:
        return math.ceil(prompt_tokens * self.top_input + output_tokens * self.output)

    def cost(self, u: Usage) -> int:
        if u.images or u.audio_seconds:  # per-unit prices: the ledger's own arithmetic
            return u.cost_nano_usd(self.spec)
        exact = (
            u.uncached_input_tokens * self.input
            + u.output_tokens * self.output
            + u.cache_read_tokens * self.cache_read
            + u.cache_write_5m_tokens * self.cache_write_5m
            + u.cache_write_1h_tokens * self.cache_write_1h
        )
        if isinstance(exact, int):
            return exact
        return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def prompt_bound(texts: list[str]) -> int | None:
    """Tokens of a short prompt, bounded from above by its UTF-8 bytes; None for a long one (count it)."""
    if sum(len(t) for t in texts) > BYTES_BOUND_CHARS:
        return None
    return sum(len(t.encode()) for t in texts)
