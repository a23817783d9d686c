"""`mcp` tools of the Responses API: connect to the client's MCP servers, list and call their tools.

The tool loop (runner.py) opens an `McpToolset` for a request's `tools`, gives the model
`chat_tools()`, and for every call the model makes to a tool it `owns()`, runs `call()` and feeds
the resulting `mcp_call` item's text back. Items have the openai SDK's shapes (`McpListTools`,
`McpCall`). Servers are reached with the official `mcp` package over streamable HTTP, or over SSE
when the URL's path ends in `/sse`; every URL passes the SSRF guard in mcp_guard.py first.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import httpx2
from mcp.shared.exceptions import MCPError

from infergate.config import float_env, int_env
from infergate.errors import InvalidRequest
from infergate.responses.mcp_client import McpConnection, new_id, parse_spec, root_cause
from infergate.responses.mcp_guard import ALLOW_VAR, AllowedPrefix, check_addresses, parse_allow_list

TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")
REQUEST_TIMEOUT = -32001  # JSON-RPC code the MCP SDK uses for a request that timed out
INVALID_PARAMS = -32602


@dataclass(frozen=True)
class McpSettings:
    allowed_urls: tuple[AllowedPrefix, ...] = ()
    max_steps: int = 8  # model turns in one request's tool loop; past it the response is incomplete
    connect_timeout: float = 10.0  # seconds to connect, initialize and list one server's tools
    call_timeout: float = 60.0  # seconds one tool call may take
    max_output_chars: int = 100_000  # a longer tool output is cut before the model sees it

    @classmethod
    def from_env(cls) -> McpSettings:
        return cls(
            allowed_urls=parse_allow_list(os.environ.get(ALLOW_VAR, "")),
            max_steps=int_env("INFERGATE_MCP_MAX_STEPS", 8, minimum=1),
            connect_timeout=float_env("INFERGATE_MCP_CONNECT_TIMEOUT", 10.0, minimum=0.1),
            call_timeout=float_env("INFERGATE_MCP_CALL_TIMEOUT", 60.0, minimum=0.1),
            max_output_chars=int_env("INFERGATE_MCP_MAX_OUTPUT_CHARS", 100_000, minimum=1),
        )


def _list_item(conn: McpConnection) -> dict[str, Any]:
    tools = []
    for tool in conn.tools:
        annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else None
        tools.append(
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.input_schema,
                "annotations": annotations or None,
            }
        )
    return {
        "id": new_id("mcpl"),
        "type": "mcp_list_tools",
        "server_label": conn.spec.label,
        "tools": tools,
        "error": None,
    }


def _content_text(blocks: list[Any]) -> str:
    """A tool result as the model reads it: text parts as they are, other parts as JSON."""
    parts = []
    for block in blocks:
        if getattr(block, "type", None) == "text":
            parts.append(block.text)
        else:
            parts.append(json.dumps(block.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return "\n".join(parts)


def call_output_text(item: dict[str, Any]) -> str:
    """What the model is told an `mcp_call` item gave: its output, or its error in words."""
    if item.get("output") is not None:
        return str(item["output"])
    error = item.get("error") or {}
    if error.get("type") == "mcp_tool_execution_error":
        content = error.get("content")
        detail = "\n".join(
            c.get("text", "") if isinstance(c, dict) else str(c) for c in (content or [])
        ) or json.dumps(content)
        return f"Error: {detail}"
    return f"Error: {error.get('message', 'the tool call failed')}"


class McpToolset:
    """The MCP servers of one request, connected, with their allowed tools listed."""

    def __init__(self, connections: list[McpConnection], settings: McpSettings, taken: set[str]) -> None:
        self.settings = settings
        self._connections = connections
        self.list_items: list[dict[str, Any]] = [_list_item(c) for c in connections]
        self._by_name: dict[str, tuple[McpConnection, Any]] = {}
        self._chat_tools: list[dict[str, Any]] = []
        self._name_tools(taken)

    @classmethod
    async def open(cls, tools: list[dict[str, Any]] | None, settings: McpSettings) -> McpToolset | None:
        """None when the request has no `mcp` tool. Every entry is validated (400 naming the field)
        before any server is contacted; then all servers are connected at once."""
        entries = [(i, t) for i, t in enumerate(tools or []) if isinstance(t, dict) and t.get("type") == "mcp"]
        if not entries:
            return None
        specs = [parse_spec(i, t, settings) for i, t in entries]
        labels = [s.label for s in specs]
        for spec in specs:
            if labels.count(spec.label) > 1:
                raise InvalidRequest(
                    f"server_label {spec.label!r} is used by more than one mcp tool",
                    param=f"tools[{spec.index}].server_label",
                )
        for spec in specs:
            await check_addresses(spec.parts, spec.policy, f"tools[{spec.index}].server_url")
        connections = [McpConnection(s, settings) for s in specs]
        results = await asyncio.gather(*(c.start() for c in connections), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(c.close() for c in connections))
            raise failures[0]
        taken = {
            str((t.get("function") or t).get("name"))
            for t in tools or []
            if isinstance(t, dict) and t.get("type") == "function"
        }
        return cls(connections, settings, taken)

    def _name_tools(self, taken: set[str]) -> None:
        """Chat names are the tools' own (made function-name safe); a name two servers share, or a
        client function tool already uses, becomes `label__name`."""
        counts: dict[str, int] = {}
        for conn in self._connections:
            for tool in conn.tools:
                safe = TOOL_NAME.sub("_", tool.name)[:64]
                counts[safe] = counts.get(safe, 0) + 1
        used = set(taken)
        for conn in self._connections:
            for tool in conn.tools:
                name = TOOL_NAME.sub("_", tool.name)[:64]
                if counts[name] > 1 or name in used:
                    name = TOOL_NAME.sub("_", f"{conn.spec.label}__{tool.name}")[:64]
                base, n = name, 2
                while name in used:
                    name, n = f"{base[:60]}_{n}", n + 1
                used.add(name)
                self._by_name[name] = (conn, tool)
                function: dict[str, Any] = {"name": name, "parameters": tool.input_schema or {"type": "object"}}
                if tool.description:
                    function["description"] = tool.description
                self._chat_tools.append({"type": "function", "function": function})

    def chat_tools(self) -> list[dict[str, Any]]:
        """OpenAI chat function-tool definitions for the model."""
        return [dict(t) for t in self._chat_tools]

    def owns(self, name: str) -> bool:
        return name in self._by_name

    def server_of(self, name: str) -> tuple[str, str]:
        """(server_label, the tool's own name) of a chat tool name this toolset owns."""
        conn, tool = self._by_name[name]
        return conn.spec.label, tool.name

    async def call(self, name: str, arguments_json: str) -> dict[str, Any]:
        """Run one tool; the finished `mcp_call` item. A failing tool is an error in the item."""
        conn, tool = self._by_name[name]
        item: dict[str, Any] = {
            "id": new_id("mcp"),
            "type": "mcp_call",
            "server_label": conn.spec.label,
            "name": tool.name,
            "arguments": arguments_json or "{}",
            "approval_request_id": None,
            "output": None,
            "error": None,
            "status": "completed",
        }
        try:
            arguments = json.loads(arguments_json or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            return _failed(item, _protocol(INVALID_PARAMS, "the tool arguments are not a JSON object"))
        session = conn.session
        if session is None:
            return _failed(item, _protocol(-32000, f"the connection to MCP server '{conn.spec.label}' is closed"))
        timeout = self.settings.call_timeout
        try:
            result = await asyncio.wait_for(session.call_tool(tool.name, arguments), timeout)
        except TimeoutError:
            return _failed(item, _protocol(REQUEST_TIMEOUT, f"the tool call timed out after {timeout:g} s"))
        except MCPError as exc:
            return _failed(item, _protocol(exc.error.code, exc.error.message))
        except Exception as exc:  # noqa: BLE001  (transport failures become the item's error)
            cause = root_cause(exc)
            if isinstance(cause, httpx2.HTTPStatusError):
                code = cause.response.status_code
                return _failed(item, {"type": "http_error", "code": code, "message": f"HTTP {code}"})
            return _failed(item, _protocol(-32000, f"{type(cause).__name__}: {cause}"[:500]))
        if result.is_error:
            content = [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in result.content]
            return _failed(item, {"type": "mcp_tool_execution_error", "content": content})
        text = _content_text(result.content)
        if not result.content and result.structured_content is not None:
            text = json.dumps(result.structured_content)
        limit = self.settings.max_output_chars
        item["output"] = text if len(text) <= limit else text[:limit] + "\n[output truncated]"
        return item

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._connections))


def _protocol(code: int, message: str) -> dict[str, Any]:
    return {"type": "mcp_protocol_error", "code": code, "message": message}


def _failed(item: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    item["error"] = error
    item["status"] = "failed"
    return item
