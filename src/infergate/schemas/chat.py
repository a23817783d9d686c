"""POST /v1/chat/completions request model.

Strict types (a string where a number belongs is a 400, not a silent coercion); unknown
top-level fields are kept and forwarded to upstreams that may understand them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Role = Literal["system", "developer", "user", "assistant", "tool"]
MAX_TOKEN_ID_DIGITS = 10
TOKEN_ID_PATTERN = f"^[0-9]{{1,{MAX_TOKEN_ID_DIGITS}}}$"


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class CacheControl(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] = "5m"


class TextPart(Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class ImageURL(Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL
    cache_control: CacheControl | None = None


class AudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(Strict):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(Strict):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    TextPart | ImagePart | AudioPart | FilePart | RefusalPart, Field(discriminator="type")
]
# The seed also shows `content` as a single part object, not only a list of them.
Content = str | list[ContentPart] | ContentPart


class FunctionCall(Strict):
    name: str
    arguments: str


class ToolCall(Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Strict):
    # Role rules are field validators (not a model validator) so an error names the field at fault.
    role: Role
    content: Content | None = Field(default=None, validate_default=True)
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, validate_default=True)
    tool_call_id: str | None = Field(default=None, validate_default=True)
    refusal: str | None = None

    @field_validator("content")
    @classmethod
    def _content_needed(cls, value: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        if value is None and role not in (None, "assistant"):
            raise ValueError(f"a '{role}' message needs content")
        return value

    @field_validator("tool_calls")
    @classmethod
    def _assistant_says_something(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("role") == "assistant" and info.data.get("content") is None and not value:
            raise ValueError("an 'assistant' message needs content or tool_calls")
        return value

    @field_validator("tool_call_id")
    @classmethod
    def _tool_call_id_needed(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("role") == "tool" and not value:
            raise ValueError("a 'tool' message needs tool_call_id")
        return value

    def text(self) -> str:
        """The message's text parts joined (images and audio are not text)."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        parts = content if isinstance(content, list) else [content]
        return "".join(p.text for p in parts if isinstance(p, TextPart))


class FunctionDef(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: dict[str, str]


class JSONSchemaFormat(Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs json_schema")
        return self


class StreamOptions(Strict):
    include_usage: bool = False


class ChatCompletionRequest(Strict):
    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, json_schema_extra={"propertyNames": {"pattern": TOKEN_ID_PATTERN}}
    )
    user: str | None = Field(default=None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("stop takes at most 4 sequences")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_keys_are_token_ids(cls, value: Any) -> Any:
        # ASCII digits only: str.isdigit() also accepts "²" or "٣", which int() then rejects
        for key in value or ():
            if not re.fullmatch(TOKEN_ID_PATTERN, key):
                raise ValueError(f"keys must be token ids (0 to {'9' * MAX_TOKEN_ID_DIGITS}), got {key!r}")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_needs_tools(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        tools = info.data.get("tools")
        if not tools:  # as OpenAI and vLLM answer, "none" included
            raise ValueError("tool_choice is only allowed with tools")
        if isinstance(value, NamedToolChoice):
            name = value.function.get("name")
            if name not in {t.function.name for t in tools}:
                raise ValueError(f"tool_choice names function {name!r}, which is not in tools")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed with stream: true")
        return value

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
