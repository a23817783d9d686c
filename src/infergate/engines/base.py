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


@dataclass
class SpeechRequest:
    """A validated text-to-speech request; `voice` None means the model's default voice."""

    text: str
    context: RequestContext
    voice: str | None = None
    speed: float = 1.0
    response_format: str = "wav"


class SpeechEngine(Engine):
    """Text to speech. An engine synthesizes 16-bit mono PCM (`synthesize`); `speak` wraps it in
    the requested container (engines/audio_format.py). Once synthesis starts, the engine puts
    the character count in `context.usage.input_tokens` (speech is billed per input character)."""

    sample_rate: int = 22_050

    @abstractmethod
    def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        """Yield little-endian 16-bit mono PCM at `sample_rate`, chunk by chunk as it is made.
        A voice the model lacks raises InvalidRequest before the first chunk. Closing the
        iterator (client gone) must stop the work promptly."""

    def speak(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        """The audio in `request.response_format` (wav: a streaming header, then PCM)."""
        from infergate.engines.audio_format import encode

        return encode(self.synthesize(request), request.response_format, self.sample_rate)


@dataclass
class ImageRequest:
    """A validated text-to-image request (from /v1/images/generations or a fal-style job input).
    None means the model's default (catalog `steps`/`guidance_scale`, else the pipeline's own)."""

    prompt: str
    context: RequestContext
    n: int = 1
    width: int = 1024
    height: int = 1024
    size: str = "1024x1024"  # as asked ("auto" allowed for upstreams); width/height are what we make
    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None  # image i uses seed + i; None: a random one (returned in the result)
    output_format: str = "png"  # png | jpeg | webp
    output_compression: int | None = None  # 0-100 for jpeg/webp
    quality: str = "auto"
    background: str = "auto"
    safety_checker: bool = True  # run the pipeline's safety checker when it has one
    user: str | None = None


@dataclass
class GeneratedImage:
    data: bytes  # encoded in `content_type`
    width: int
    height: int
    content_type: str
    seed: int | None = None
    nsfw: bool = False  # the safety checker flagged (and blanked) it


@dataclass
class ImageResult:
    images: list[GeneratedImage]
    usage: Usage | None  # None: the api layer counts (prompt tokens, image tokens by size)
    quality: str = "medium"
    background: str = "opaque"
    output_format: str = "png"
    timings: dict[str, float] = field(default_factory=dict)


class ImageEngine(Engine):
    """Text to image. `check` refuses what the backend cannot do before anything is billed;
    `generate` makes `request.n` images. Cancelling `generate` (client gone) must stop the work
    promptly (a local pipeline stops at its next denoising step)."""

    def check(self, request: ImageRequest) -> None:
        """Raise InvalidRequest (naming the field) for what this backend cannot make."""

    @abstractmethod
    async def generate(self, request: ImageRequest) -> ImageResult:
        """The images, encoded in `request.output_format`."""
