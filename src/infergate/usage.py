"""The Usage value of one request, its price, and its ledger entry (written by storage/ledger_writer.py).

A request's usage is built once (from the engine's counts) and that same value is rendered to
the client and written to the ledger, so the bill and the response can never disagree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Any

from infergate.catalog import ModelSpec


@dataclass
class Usage:
    """Token counts of one request. `input_tokens` counts every prompt token, cached or not."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0  # generated images, priced per image (ModelSpec.image_price) on top of tokens
    audio_seconds: float = 0.0  # generated audio (text-to-audio), priced per second
    estimated: bool = False
    # explicit prompt caching (cache_control) was asked for: render the seed's cache fields
    cache_control: bool = False
    # upstream details we don't bill on but pass through (e.g. completion_tokens_details)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def uncached_input_tokens(self) -> int:
        cached = self.cache_read_tokens + self.cache_write_5m_tokens + self.cache_write_1h_tokens
        return max(self.input_tokens - cached, 0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def cost_nano_usd(self, spec: ModelSpec) -> int:
        """Cost in whole nano-USD: exact per-token prices summed, rounded once (half to even)."""
        exact = (
            self.uncached_input_tokens * spec.price_nano("input")
            + self.output_tokens * spec.price_nano("output")
            + self.cache_read_tokens * spec.price_nano("cache_read")
            + self.cache_write_5m_tokens * spec.price_nano("cache_write_5m")
            + self.cache_write_1h_tokens * spec.price_nano("cache_write_1h")
        )
        if self.images:  # USD per image -> nano-USD
            exact += self.images * Decimal(str(spec.image_price)) * 1_000_000_000
        if self.audio_seconds:  # USD per second -> nano-USD
            exact += Decimal(str(self.audio_seconds)) * Decimal(str(spec.audio_second_price)) * 1_000_000_000
        return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))

    def to_chat(self) -> dict[str, Any]:
        """The chat.completion `usage` object, by one rule on every backend: the seed's shape
        (`prompt_tokens` = the uncached rest, cache write/read fields) when the request used
        cache_control, else OpenAI's (`prompt_tokens` = every prompt token, reuse in
        `prompt_tokens_details.cached_tokens`)."""
        out: dict[str, Any] = dict(self.extra)
        if self.cache_control:
            written = self.cache_write_5m_tokens + self.cache_write_1h_tokens
            out.update(
                {
                    "prompt_tokens": self.uncached_input_tokens,
                    "completion_tokens": self.output_tokens,
                    "total_tokens": self.uncached_input_tokens + self.output_tokens,
                    "cache_created_input_tokens": written,
                    "cache_creation": {
                        "ephemeral_5m_input_tokens": self.cache_write_5m_tokens,
                        "ephemeral_1h_input_tokens": self.cache_write_1h_tokens,
                    },
                    "cache_read_input_tokens": self.cache_read_tokens,
                }
            )
        else:
            out.update(
                {
                    "prompt_tokens": self.input_tokens,
                    "completion_tokens": self.output_tokens,
                    "total_tokens": self.total_tokens,
                }
            )
            if self.cache_read_tokens or "prompt_tokens_details" in out:
                details = dict(out.get("prompt_tokens_details") or {})
                details["cached_tokens"] = self.cache_read_tokens
                out["prompt_tokens_details"] = details
        return out

    @classmethod
    def from_openai(cls, raw: Any) -> Usage | None:
        """Read an upstream's usage object: OpenAI fields and Anthropic-style cache fields.

        None when the core counts are missing or not sane token counts (the caller then estimates);
        a details field that is not an object is ignored, the core counts kept. How the usage is
        rendered never follows the upstream's style: `cache_control` stays False here and the engine
        sets it from the request (the seed's fields only when the request used cache_control).
        """
        if not isinstance(raw, dict):
            return None
        prompt = _int(raw.get("prompt_tokens", raw.get("input_tokens")))
        completion = _int(raw.get("completion_tokens", raw.get("output_tokens")))
        if prompt is None or completion is None:
            return None
        details = _obj(raw.get("prompt_tokens_details")) or _obj(raw.get("input_tokens_details"))
        creation = _obj(raw.get("cache_creation"))
        w5 = _int(creation.get("ephemeral_5m_input_tokens")) or 0
        w1 = _int(creation.get("ephemeral_1h_input_tokens")) or 0
        created = _int(raw.get("cache_created_input_tokens", raw.get("cache_creation_input_tokens"))) or 0
        if created and not (w5 or w1):
            w5 = created
        anthropic_style = any(name in raw for name in ANTHROPIC_CACHE_FIELDS)
        if anthropic_style:  # there prompt_tokens excludes cached tokens; ours counts them all
            read = _int(raw.get("cache_read_input_tokens")) or 0
            prompt += read + w5 + w1
        else:  # OpenAI's cached_tokens are part of prompt_tokens, never more than it
            read = min(_int(details.get("cached_tokens")) or 0, prompt)
            w5 = w1 = 0
        if prompt > MAX_TOKENS:
            return None
        completion_details = _obj(raw.get("completion_tokens_details"))
        extra = {"completion_tokens_details": completion_details} if completion_details else {}
        return cls(
            input_tokens=prompt,
            output_tokens=completion,
            cache_read_tokens=read,
            cache_write_5m_tokens=w5,
            cache_write_1h_tokens=w1,
            reasoning_tokens=_int(completion_details.get("reasoning_tokens")) or 0,
            extra=extra,
        )


# Their presence means prompt_tokens counts only the uncached rest (Anthropic's and the seed's style).
ANTHROPIC_CACHE_FIELDS = (
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_created_input_tokens",
    "cache_creation",
)
# Beyond any context window; larger numbers from an upstream are garbage (and would not fit the
# ledger's integer columns), so such a usage is estimated instead.
MAX_TOKENS = 1 << 30


def _int(value: Any) -> int | None:
    """A token count: a non-negative int (not a bool, not a float) within MAX_TOKENS."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def _obj(value: Any) -> dict[str, Any]:
    """An upstream's details object; anything else (a number, a list, null) counts as absent."""
    return value if isinstance(value, dict) else {}


def now_ms() -> int:
    return int(time.time() * 1000)


def unit_cost_nano(price_usd: float, units: float) -> int:
    """The most `units` of something priced per unit (an image, a second of audio) can cost, in
    whole nano-USD rounded up: what a budget reserves for it before the work (`Platform.admit`)."""
    exact = Decimal(str(price_usd)) * Decimal(str(units)) * 1_000_000_000
    return int(exact.to_integral_value(rounding=ROUND_CEILING))
