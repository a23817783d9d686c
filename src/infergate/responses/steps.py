"""What a response's model calls add up to: one bill over every step, and a prompt that fits.

A response may call the model several times (the MCP tool loop). Each call counts into its own
live Usage (engines overwrite their prompt counts per call); `Budget` sums them and settles the
response's single Meter once, with the sum, on every way out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from infergate.catalog import ModelSpec
from infergate.metering import Meter
from infergate.schemas.responses import ResponsesRequest
from infergate.tokens import chat_framing_tokens, count_tokens
from infergate.usage import Usage

USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
)
# Counting a larger text happens in a thread (keeps the event loop free).
INLINE_CHARS = 16_384


def _consumed(usage: Usage) -> bool:
    return any(getattr(usage, name) for name in USAGE_FIELDS)


def _add(into: Usage, other: Usage) -> None:
    for name in USAGE_FIELDS:
        setattr(into, name, getattr(into, name) + getattr(other, name))
    into.estimated = into.estimated or other.estimated


async def _count(texts: list[str]) -> int:
    if sum(len(t) for t in texts) <= INLINE_CHARS:
        return sum(count_tokens(t) for t in texts)
    return await asyncio.to_thread(lambda: sum(count_tokens(t) for t in texts))


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    else:
        text = ""
    for call in message.get("tool_calls") or ():
        text += str(call["function"]["name"]) + str(call["function"]["arguments"])
    return text


class Budget:
    """The sum of a response's model calls, billed once through its Meter."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.total = Usage()
        self.current: Usage | None = None
        self.tool_output_tokens = 0

    def step_usage(self) -> Usage:
        """A fresh live Usage for the next model call."""
        self.current = Usage()
        return self.current

    async def end_step(
        self, final: Usage | None, reasoning: list[str], output: list[str], messages: list[dict[str, Any]]
    ) -> None:
        """Add a finished call: the backend's usage, else its live count, else an estimate."""
        live, self.current = self.current, None
        if final is None and live is not None and self.meter.live_usage and _consumed(live):
            final = live
        if final is None:  # an upstream that reported nothing: count it ourselves, marked estimated
            prompt = await _count([message_text(m) for m in messages]) + chat_framing_tokens(len(messages))
            final = Usage(input_tokens=prompt, output_tokens=await _count(output), estimated=True)
        if not final.reasoning_tokens and reasoning:  # inline <think> text of a local model
            final.reasoning_tokens = min(await _count(reasoning), final.output_tokens)
        _add(self.total, final)

    def settle(self) -> Usage:
        self.meter.settle(200, self.total)
        return self.total

    def fail(self, exc: BaseException) -> None:
        """Bill what the finished calls used plus what the current one consumed so far."""
        spent = Usage()
        _add(spent, self.total)
        if self.current is not None:
            _add(spent, self.current)
        for name in USAGE_FIELDS:
            setattr(self.meter.usage, name, getattr(spent, name))
        self.meter.usage.estimated = spent.estimated
        self.meter.fail(exc)


async def fit_context(
    messages: list[dict[str, Any]], params: ResponsesRequest, spec: ModelSpec
) -> list[dict[str, Any]]:
    """`truncation: auto` on a local model: drop the oldest turns until the prompt (counted with
    the local tokenizer) leaves room for the output. `disabled`, or an upstream (whose context
    window infergate does not know), sends the prompt as it is: a prompt that does not fit is
    then the model's 400 (param `input`)."""
    from infergate.responses.translate import drop_oldest_turn

    if params.truncation != "auto" or spec.backend != "llama_cpp":
        return messages
    reserve = min(params.max_output_tokens or spec.n_ctx // 8, spec.n_ctx // 2)
    counts = [await _count([message_text(m)]) + chat_framing_tokens(1) for m in messages]
    total = sum(counts)
    while total + reserve > spec.n_ctx:
        shorter = drop_oldest_turn(messages)
        if shorter is None:
            break
        kept = {id(m) for m in shorter}
        total -= sum(c for m, c in zip(messages, counts, strict=True) if id(m) not in kept)
        counts = [c for m, c in zip(messages, counts, strict=True) if id(m) in kept]
        messages = shorter
    return messages
