"""POST /v1/responses request model (OpenAI's Responses API).

Strict types (a string where a number belongs is a 400 naming the field); unknown top-level
fields are ignored, as OpenAI ignores them. Input items are validated here and normalized
(ids, content parts) by responses/translate.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_METADATA_KEYS = 16


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class InputText(Strict):
    type: Literal["input_text"]
    text: str


class InputImage(Strict):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] = "auto"

    @model_validator(mode="after")
    def _url_given(self) -> InputImage:
        if not self.image_url:
            raise ValueError(
                "input_image needs image_url (an https:// or data: URL); file_id is not supported"
            )
        return self


class OutputText(Strict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list)


class Refusal(Strict):
    type: Literal["refusal"]
    refusal: str


class ReasoningTextPart(Strict):
    type: Literal["reasoning_text"]
    text: str


InputPart = Annotated[InputText | InputImage | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(Strict):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]
    status: str | None = None


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    status: str | None = None


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    output: str | list[InputPart]
    status: str | None = None


class ReasoningItem(Strict):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[ReasoningTextPart] | None = None
    encrypted_content: str | None = None
    status: str | None = None


class McpListToolsItem(Strict):
    type: Literal["mcp_list_tools"]
    id: str | None = None
    server_label: str
    tools: list[dict[str, Any]]
    error: str | None = None


class McpCallItem(Strict):
    type: Literal["mcp_call"]
    id: str | None = None
    server_label: str
    name: str
    arguments: str
    output: str | None = None
    error: Any = None
    status: str | None = None


def _item_type(value: Any) -> str:
    # a message may leave out "type" (EasyInputMessage)
    if isinstance(value, dict):
        return str(value.get("type") or "message")
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[McpListToolsItem, Tag("mcp_list_tools")]
    | Annotated[McpCallItem, Tag("mcp_call")],
    Discriminator(_item_type),
]


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class McpTool(Strict):
    type: Literal["mcp"]
    server_label: str = Field(min_length=1, max_length=64)
    server_url: str | None = None
    allowed_tools: list[str] | dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    require_approval: Any = None
    server_description: str | None = None


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]


class NamedFunctionChoice(Strict):
    type: Literal["function"]
    name: str


class NamedMcpChoice(Strict):
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


class TextFormatPlain(Strict):
    type: Literal["text"]


class TextFormatJsonObject(Strict):
    type: Literal["json_object"]


class TextFormatJsonSchema(Strict):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")  # OpenAI's rule
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    TextFormatPlain | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")
]


class TextConfig(Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ConversationRef(Strict):
    id: str = Field(min_length=1)


class ResponsesRequest(Strict):
    model: str = Field(min_length=1, max_length=200)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool = False
    store: bool = True
    background: bool = False
    previous_response_id: str | None = Field(default=None, min_length=1)
    conversation: str | ConversationRef | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | NamedMcpChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    reasoning: ReasoningConfig | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: Any) -> Any:
        if value is not None:
            if len(value) > MAX_METADATA_KEYS:
                raise ValueError(f"metadata takes at most {MAX_METADATA_KEYS} keys")
            for key in value:
                if len(key) > 64:
                    raise ValueError(f"metadata keys are at most 64 characters, got {key[:70]!r}")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, value: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools") or []
        if value == "required" and not tools:  # the model could not obey it
            raise ValueError("tool_choice 'required' needs at least one tool in tools")
        if isinstance(value, NamedFunctionChoice):
            names = {t.name for t in tools if isinstance(t, FunctionTool)}
            if value.name not in names:
                raise ValueError(f"tool_choice names function {value.name!r}, which is not in tools")
        if isinstance(value, NamedMcpChoice):
            labels = {t.server_label for t in tools if isinstance(t, McpTool)}
            if value.server_label not in labels:
                raise ValueError(
                    f"tool_choice names MCP server {value.server_label!r}, which is not in tools"
                )
        return value

    @field_validator("background")
    @classmethod
    def _background_needs_store(cls, value: Any, info: ValidationInfo) -> Any:
        if value and info.data.get("store") is False:
            raise ValueError("background responses need store: true")
        return value

    @field_validator("conversation")
    @classmethod
    def _one_kind_of_state(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("previous_response_id"):
            raise ValueError("conversation and previous_response_id cannot be used together")
        return value

    @property
    def conversation_id(self) -> str | None:
        conv = self.conversation
        return conv.id if isinstance(conv, ConversationRef) else conv

    @property
    def function_tools(self) -> list[FunctionTool]:
        return [t for t in self.tools or [] if isinstance(t, FunctionTool)]

    @property
    def mcp_tools(self) -> list[McpTool]:
        return [t for t in self.tools or [] if isinstance(t, McpTool)]
