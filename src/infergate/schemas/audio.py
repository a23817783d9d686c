"""POST /v1/audio/speech request model (OpenAI's shape).

Strict types, like chat: a string where a number belongs is a 400. Unknown fields are ignored
(`instructions`, which our voices cannot follow, among them).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_INPUT_CHARS = 4096


class SpeechCreateRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1, max_length=200)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="the text to speak")
    voice: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="a voice of the model; OpenAI's names (alloy, nova, ...) select the model's default",
    )
    # checked against what the server can encode (engines/audio_format.py), with a 400 listing them
    response_format: str = Field(default="wav", min_length=1, max_length=20)
    speed: float = Field(default=1.0, ge=0.25, le=4.0, allow_inf_nan=False)
    stream_format: Literal["audio"] | None = None
