"""Interfaces every backend implements, one per model kind.

A backend never touches HTTP, auth or the ledger. It receives a validated request, does the
work, and reports token counts as a `Usage`; the api layer renders the response and bills.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infergate.cache.plan import PromptCachePlan
from infergate.catalog import ModelSpec
from infergate.schemas.chat import ChatCompletionRequest
from infergate.usage import Usage


@dataclass
class RequestContext:
    """Who asked, and what the work has consumed so far.

    `usage` is live: an engine adds prompt, cache and output tokens to it as the work goes
    (prompt and cache counts once the prompt is evaluated, output tokens as they are generated).
    The metering layer bills whatever it holds when a request is cut short (failure, timeout,
    client gone), so an engine keeps it current rather than only reporting a final Usage.
    """

    request_id: str
    key_uuid: str | None = None
    usage: Usage = field(default_factory=Usage)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatRequest:
    """`params` is the validated request; `body` the client's JSON as sent (for pass-through)."""

    params: ChatCompletionRequest
    body: dict[str, Any]
    context: RequestContext
    cache_plan: PromptCachePlan = field(default_factory=PromptCachePlan)


@dataclass
class ChatResult:
    """A finished chat completion: `body` is the chat.completion object without `usage`, which
    is None when the backend could not tell (the api layer then counts it, marked estimated)."""

    body: dict[str, Any]
    usage: Usage | None


class Engine(ABC):  # noqa: B024 - kinds add their abstract methods
    def __init__(self, spec: ModelSpec, data_dir: Path | None = None) -> None:
        self.spec = spec
        self.data_dir = data_dir  # where an engine may keep files (None: keep nothing on disk)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights / open connection pools. Called once at server start."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called at shutdown after in-flight requests drained."""

    def readiness(self) -> str | None:
        """None when able to serve, else the reason (shown by GET /ready)."""
        return None


class ChatEngine(Engine):
    # True when the engine keeps `RequestContext.usage` current as it works (so a request cut
    # short is billed from it); False when only the backend's final report counts (upstreams),
    # and the metering layer estimates what a cut-short request consumed.
    live_usage = False

    @abstractmethod
    async def complete(self, request: ChatRequest) -> ChatResult:
        """Non-streaming chat completion."""

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any] | Usage]:
        """Yield chat.completion.chunk dicts (without usage) as they are produced, then one Usage last.

        The Usage may be omitted when unknown (an upstream that reports none): the api layer then
        counts the tokens and marks them estimated. Cancelling the iterator (client gone) must
        stop the work promptly.
        """
