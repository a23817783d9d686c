"""PromptCachePlan: the cache_control breakpoints of a chat request.

`cache_control: {"type": "ephemeral", "ttl": "5m" | "1h"}` on a content part marks the prompt
up to and including that part as a cacheable prefix (the seed's three forms: a string is never
marked, a single part object or a list of parts may be). At most 4 breakpoints per request, as
Anthropic allows. Type and ttl themselves are validated by the request schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from infergate.errors import InvalidRequest
from infergate.schemas.chat import Message

MAX_BREAKPOINTS = 4
TTL_SECONDS = {"5m": 300, "1h": 3600}
Ttl = Literal["5m", "1h"]


@dataclass(frozen=True)
class Breakpoint:
    message_index: int
    part_index: int
    ttl: Ttl

    @property
    def ttl_seconds(self) -> int:
        return TTL_SECONDS[self.ttl]


@dataclass(frozen=True)
class PromptCachePlan:
    breakpoints: tuple[Breakpoint, ...] = ()

    @property
    def explicit(self) -> bool:
        """The client asked for caching: usage is reported in the seed's cache fields."""
        return bool(self.breakpoints)

    @classmethod
    def from_messages(cls, messages: list[Message]) -> PromptCachePlan:
        found: list[Breakpoint] = []
        for m_index, message in enumerate(messages):
            content = message.content
            if content is None or isinstance(content, str):
                continue
            parts = content if isinstance(content, list) else [content]
            for p_index, part in enumerate(parts):
                control = getattr(part, "cache_control", None)
                if control is not None:
                    found.append(Breakpoint(m_index, p_index, control.ttl))
        if len(found) > MAX_BREAKPOINTS:
            last = found[MAX_BREAKPOINTS]
            raise InvalidRequest(
                f"At most {MAX_BREAKPOINTS} cache_control breakpoints per request; found {len(found)}.",
                param=f"messages.{last.message_index}.content.{last.part_index}.cache_control",
                code="too_many_cache_breakpoints",
            )
        return cls(tuple(found))
