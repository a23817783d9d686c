"""Responses API input -> chat completions: items to messages, tools, text format, options.

Every chat backend (the embedded engine, OpenAI-compatible upstreams) serves /v1/responses
through this translation. Items are first normalized into the stored shape (ids, content parts)
so the same list is what the store keeps and what `previous_response_id` replays.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
from typing import Any

from infergate.errors import InvalidRequest
from infergate.schemas.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputText,
    McpCallItem,
    McpListToolsItem,
    MessageItem,
    NamedFunctionChoice,
    NamedMcpChoice,
    OutputText,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
    TextFormatJsonObject,
    TextFormatJsonSchema,
)

ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "mcp_list_tools": "mcpl",
    "mcp_call": "mcp",
}


# Item ids only need to be unique (every read is checked against the key that owns the response),
# so they come from a fast generator seeded from the OS once per process (a forked worker reseeds);
# response ids use `secret_id`.
_ITEM_IDS = random.Random(secrets.randbits(256))
_SEEDED_IN = os.getpid()


def new_id(prefix: str) -> str:
    """An item id (`msg_...`, `fc_...`): 48 random hex digits, as OpenAI's."""
    global _SEEDED_IN
    if os.getpid() != _SEEDED_IN:
        _ITEM_IDS.seed(secrets.randbits(256))
        _SEEDED_IN = os.getpid()
    return f"{prefix}_{_ITEM_IDS.getrandbits(192):048x}"


def secret_id(prefix: str) -> str:
    """A response id: 12 hex digits of the time in ms, then 36 unguessable ones (the OS's).
    The time first (as in OpenAI's own ids) makes ids grow, so the store's indexes on them take
    appends instead of random inserts: a commit writes far fewer pages."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(18)}"


def _part(part: Any, role: str) -> dict[str, Any]:
    if isinstance(part, InputText):
        if role == "assistant":
            return {"type": "output_text", "text": part.text, "annotations": [], "logprobs": []}
        return {"type": "input_text", "text": part.text}
    if isinstance(part, InputImage):
        return {"type": "input_image", "image_url": part.image_url, "detail": part.detail, "file_id": None}
    if isinstance(part, OutputText):
        return {
            "type": "output_text",
            "text": part.text,
            "annotations": list(part.annotations),
            "logprobs": [],
        }
    if isinstance(part, Refusal):
        return {"type": "refusal", "refusal": part.refusal}
    raise AssertionError(part)


def _content(content: str | list[Any], role: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if role == "assistant":
            return [{"type": "output_text", "text": content, "annotations": [], "logprobs": []}]
        return [{"type": "input_text", "text": content}]
    return [_part(p, role) for p in content]


def normalize_input(params: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as stored items, each with an id (what input_items lists)."""
    if isinstance(params.input, str):
        return [_message("user", [{"type": "input_text", "text": params.input}])]
    items: list[dict[str, Any]] = []
    for item in params.input:
        if isinstance(item, MessageItem):
            msg = _message(item.role, _content(item.content, item.role))
            if item.id:
                msg["id"] = item.id
            items.append(msg)
        elif isinstance(item, FunctionCallItem):
            items.append(
                {
                    "type": "function_call",
                    "id": item.id or new_id("fc"),
                    "call_id": item.call_id,
                    "name": item.name,
                    "arguments": item.arguments,
                    "status": "completed",
                }
            )
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output
            if not isinstance(output, str):
                output = "".join(getattr(p, "text", "") for p in output)
            items.append(
                {
                    "type": "function_call_output",
                    "id": item.id or new_id("fco"),
                    "call_id": item.call_id,
                    "output": output,
                    "status": "completed",
                }
            )
        elif isinstance(item, ReasoningItem):
            items.append(
                {
                    "type": "reasoning",
                    "id": item.id or new_id("rs"),
                    "summary": list(item.summary),
                    "content": [p.model_dump() for p in item.content or []],
                    "status": "completed",
                }
            )
        elif isinstance(item, McpListToolsItem | McpCallItem):
            dumped = item.model_dump(exclude_none=True)
            dumped["id"] = item.id or new_id(ID_PREFIXES[item.type])
            items.append(dumped)
    return items


def _message(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "id": new_id("msg"), "role": role, "status": "completed", "content": content}


def has_images(items: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(p, dict) and p.get("type") == "input_image"
        for it in items
        if it.get("type") == "message"
        for p in it.get("content") or ()
    )


def _chat_content(content: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Content parts for chat: plain text when there are no images (every backend takes that)."""
    if not any(p.get("type") == "input_image" for p in content):
        return "".join(_part_text(p) for p in content)
    out: list[dict[str, Any]] = []
    for p in content:
        if p.get("type") == "input_image":
            image: dict[str, Any] = {"url": p["image_url"]}
            if p.get("detail") in ("low", "high", "auto"):
                image["detail"] = p["detail"]
            out.append({"type": "image_url", "image_url": image})
        else:
            out.append({"type": "text", "text": _part_text(p)})
    return out


def _part_text(part: dict[str, Any]) -> str:
    if part.get("type") == "refusal":
        return str(part.get("refusal") or "")
    return str(part.get("text") or "")


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """Items (history, input, this response's output so far) as chat messages.

    Consecutive function calls become one assistant message with tool_calls (attached to the
    assistant text right before them); an MCP call is a tool call plus its result; reasoning and
    tool listings are not replayed to the model.
    """
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})

    def assistant_for_calls() -> dict[str, Any]:
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
            last["tool_calls"] = []
            return last
        if last is not None and last["role"] == "assistant" and last.get("_open"):
            return last
        msg: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [], "_open": True}
        messages.append(msg)
        return msg

    for item in items:
        kind = item.get("type")
        if kind == "message":
            role = item["role"]
            content = _chat_content(item.get("content") or [])
            messages.append({"role": role, "content": content})
        elif kind == "function_call" or kind == "mcp_call":
            msg = assistant_for_calls()
            msg["_open"] = True
            call_id = item.get("call_id") or item["id"]
            name = item["name"]
            msg["tool_calls"].append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": item.get("arguments") or "{}"},
                }
            )
            if kind == "mcp_call":
                result = item.get("output")
                if result is None:
                    result = f"Error: {json.dumps(item.get('error'))}"
                messages.append({"role": "tool", "tool_call_id": call_id, "content": str(result)})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item.get("output") or ""}
            )
    for msg in messages:
        msg.pop("_open", None)
    return messages


def turn_starts(messages: list[dict[str, Any]]) -> list[int]:
    """Indexes where a conversation turn (a user message and what follows it) starts."""
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def drop_oldest_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The messages without their oldest turn (system messages kept); None when only one is left."""
    starts = turn_starts(messages)
    if len(starts) < 2:
        return None
    first, second = starts[0], starts[1]
    head = [m for m in messages[:first] if m["role"] in ("system", "developer")]
    kept_between = [m for m in messages[first:second] if m["role"] in ("system", "developer")]
    return head + kept_between + messages[second:]


def chat_tools(params: ResponsesRequest, mcp_tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tools = []
    for t in params.function_tools:
        fn: dict[str, Any] = {"name": t.name}
        if t.description is not None:
            fn["description"] = t.description
        fn["parameters"] = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
        tools.append({"type": "function", "function": fn})
    return tools + mcp_tools


def chat_body(
    params: ResponsesRequest, messages: list[dict[str, Any]], tools: list[dict[str, Any]], stream: bool
) -> dict[str, Any]:
    """The chat.completions body for one model call of this response."""
    body: dict[str, Any] = {"model": params.model, "messages": messages, "stream": stream}
    if params.max_output_tokens is not None:
        body["max_tokens"] = params.max_output_tokens
    for name in ("temperature", "top_p", "user"):
        value = getattr(params, name)
        if value is not None:
            body[name] = value
    if tools:
        body["tools"] = tools
        choice = params.tool_choice
        if isinstance(choice, NamedFunctionChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif isinstance(choice, NamedMcpChoice):
            body["tool_choice"] = "required"
        elif choice is not None:
            body["tool_choice"] = choice
        if params.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = params.parallel_tool_calls
    fmt = params.text.format if params.text else None
    if isinstance(fmt, TextFormatJsonObject):
        body["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, TextFormatJsonSchema):
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        if fmt.description is not None:
            schema["description"] = fmt.description
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if params.reasoning is not None and params.reasoning.effort is not None:
        body["reasoning_effort"] = params.reasoning.effort  # upstreams that reason take it
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def check_vision(items: list[dict[str, Any]], model_id: str, vision: bool) -> None:
    if has_images(items) and not vision:
        raise InvalidRequest(
            f"The model '{model_id}' does not accept images (input_image); "
            "send text only, or use a model whose catalog entry says vision = true.",
            param="input",
            code="invalid_image",
        )


def check_call_outputs(history: list[dict[str, Any]], params: ResponsesRequest) -> None:
    """Every `function_call_output` must answer a `function_call` made before it (in the history
    or earlier in this input): OpenAI's 400, rather than an orphan tool message sent upstream."""
    if isinstance(params.input, str):
        return
    calls = {it.get("call_id") for it in history if it.get("type") == "function_call"}
    for item in params.input:
        if isinstance(item, FunctionCallItem):
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutputItem) and item.call_id not in calls:
            raise InvalidRequest(
                f"No tool call found for function call output with call_id {item.call_id}.",
                param="input",
            )
