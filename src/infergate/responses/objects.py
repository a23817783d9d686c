"""The Response object and its usage, in the shape the openai SDK's `Response` type validates."""

from __future__ import annotations

import time
from typing import Any

from infergate.catalog import ModelSpec
from infergate.schemas.responses import FunctionTool, McpTool, ResponsesRequest
from infergate.usage import Usage


def usage_object(usage: Usage, tool_output_tokens: int = 0) -> dict[str, Any]:
    """Responses usage: every prompt token in input_tokens, reuse in cached_tokens."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_5m_tokens + usage.cache_write_1h_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {
            "reasoning_tokens": min(usage.reasoning_tokens, usage.output_tokens),
            "tool_output_tokens": tool_output_tokens,
        },
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _tool(tool: Any) -> dict[str, Any]:
    if isinstance(tool, FunctionTool):
        return {
            "type": "function",
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
            "strict": tool.strict,
        }
    assert isinstance(tool, McpTool)
    # headers carry the client's secrets for its MCP server: never echoed or stored
    out: dict[str, Any] = {"type": "mcp", "server_label": tool.server_label, "server_url": tool.server_url}
    if tool.allowed_tools is not None:
        out["allowed_tools"] = tool.allowed_tools
    if tool.require_approval is not None:
        out["require_approval"] = tool.require_approval
    if tool.server_description is not None:
        out["server_description"] = tool.server_description
    return out


def _tool_choice(params: ResponsesRequest) -> Any:
    choice = params.tool_choice
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    return choice.model_dump(exclude_none=True)


def _text_config(params: ResponsesRequest) -> dict[str, Any]:
    fmt = params.text.format if params.text else None
    out: dict[str, Any] = {
        "format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
    }
    out["verbosity"] = (params.text.verbosity if params.text else None) or "medium"
    return out


def output_text(output: list[dict[str, Any]]) -> str:
    return "".join(
        part.get("text", "")
        for item in output
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if part.get("type") == "output_text"
    )


def response_object(
    params: ResponsesRequest,
    spec: ModelSpec,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    *,
    error: dict[str, Any] | None = None,
    incomplete_details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    reasoning = params.reasoning
    conv = params.conversation_id
    finished = status in ("completed", "incomplete", "failed", "cancelled")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "created": created_at,  # the gradient SDK's CreateResponseResponse requires it
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "background": params.background,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": params.instructions,
        "max_output_tokens": params.max_output_tokens,
        "max_tool_calls": None,
        "model": spec.id,
        "output": [dict(item) for item in output] if finished else list(output),
        "output_text": output_text(output),
        "parallel_tool_calls": True if params.parallel_tool_calls is None else params.parallel_tool_calls,
        "previous_response_id": params.previous_response_id,
        "conversation": {"id": conv} if conv else None,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None,
        },
        "service_tier": "default",
        "store": params.store,
        "temperature": 1.0 if params.temperature is None else params.temperature,
        "text": _text_config(params),
        "tool_choice": _tool_choice(params),
        "tools": [_tool(t) for t in params.tools or []],
        "top_p": 1.0 if params.top_p is None else params.top_p,
        "truncation": params.truncation,
        "usage": usage,
        "user": params.user,
        "metadata": dict(params.metadata or {}),
    }
