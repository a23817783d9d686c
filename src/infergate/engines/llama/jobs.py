"""What flows between the llama.cpp engine and its scheduler: a `Job` in, `Event`s out.

Events are delivered in batches (one list per decode step) through `Job.deliver`, which must be
thread-safe: the scheduler calls it from the model's worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infergate.cache.plan import Ttl
from infergate.engines.llama.prefix import CacheUsage
from infergate.engines.llama.sampling import SamplingOptions


@dataclass(slots=True)
class Started:
    prompt_tokens: int


@dataclass(slots=True)
class Delta:
    """New text of choice `index` and the output tokens generated since its previous Delta (the
    text may be empty: tokens held back, e.g. a possible stop sequence, are still counted)."""

    index: int
    text: str
    logprobs: list[dict[str, Any]] | None
    tokens: int = 0


@dataclass(slots=True)
class Done:
    index: int
    finish_reason: str
    output_tokens: int


@dataclass(slots=True)
class Cached:
    """Prompt-cache usage of the job so far: the read when a slot is given, again after each
    breakpoint write, and the whole once its prompt is evaluated (before any Delta)."""

    usage: CacheUsage


@dataclass(slots=True)
class Failed:
    error: Exception


Event = Started | Cached | Delta | Done | Failed


@dataclass(eq=False)
class Job:
    """One request: `n` sequences over the same prompt. `deliver` must be thread-safe."""

    messages: list[dict[str, str]]
    n: int
    max_tokens: int | None
    stop: list[str]
    sampling: SamplingOptions
    deliver: Callable[[list[Event]], None]
    cache_ttls: list[Ttl] = field(default_factory=list)  # ttl of breakpoint k (marked in messages)
    scope: str = ""  # who may reuse its cached prefixes (slots and saved states): see engine.cache_scope
    cancelled: bool = False
    prompt: list[int] | None = None
    boundaries: list[tuple[int, Ttl]] = field(default_factory=list)  # breakpoint token counts
    admitted: int = 0  # choices given a slot so far
    cache_usage: CacheUsage | None = None  # set by the first choice placed in a slot

    @property
    def explicit_cache(self) -> bool:
        """The request used cache_control."""
        return bool(self.cache_ttls)
