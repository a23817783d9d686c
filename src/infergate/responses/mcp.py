"""`mcp` tools of the Responses API: connect to the client's MCP servers, list and call their tools.

The tool loop (runner.py) opens an `McpToolset` for a request's `tools`, gives the model
`chat_tools()`, and for every call the model makes to a tool it `owns()`, runs `call()` and feeds
the resulting `mcp_call` item's text back. Items have the openai SDK's shapes (`McpListTools`,
`McpCall`). Servers are reached with the official `mcp` package (mcp_client.py) over streamable
HTTP, or SSE when the URL's path ends in `/sse`; every URL passes the SSRF guard (mcp_guard.py).
Only `require_approval: "never"` is served: approval round trips are refused with a 400.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult

from infergate.config import float_env, int_env
from infergate.errors import InvalidRequest
from infergate.responses.mcp_guard import (
    ALLOW_VAR,
    AddressPolicy,
    AllowedPrefix,
    check_addresses,
    check_url,
    parse_allow_list,
)

if TYPE_CHECKING:
    from infergate.responses.mcp_client import McpConnection

TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")
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


@dataclass
class ServerSpec:
    """One validated `mcp` tool entry of the request."""

    index: int
    label: str
    parts: SplitResult  # the URL, parsed
    sse: bool
    headers: dict[str, str]
    allowed: frozenset[str] | None  # tool names; None: every tool
    read_only: bool  # allowed_tools.read_only: only tools annotated readOnlyHint
    policy: AddressPolicy


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def parse_spec(index: int, tool: dict[str, Any], settings: McpSettings) -> ServerSpec:
    """Validate one `mcp` tool (shape, approval mode, allow-list); 400 naming the field otherwise."""
    at = f"tools[{index}]"
    label = tool.get("server_label")
    if not isinstance(label, str) or not label.strip():
        raise InvalidRequest("server_label is required for mcp tools", param=f"{at}.server_label")
    if tool.get("server_url") is None and (tool.get("connector_id") or tool.get("tunnel_id")):
        raise InvalidRequest(
            "connectors and tunnels are not available here; give the MCP server's server_url",
            param=f"{at}.server_url",
        )
    approval = tool.get("require_approval")
    if approval != "never":
        raise InvalidRequest(
            "this server runs mcp tools without approval requests only: set require_approval to "
            f"'never' (got {json.dumps(approval)[:100]})",
            param=f"{at}.require_approval",
        )
    parts, policy = check_url(tool.get("server_url"), settings.allowed_urls, f"{at}.server_url")
    headers = tool.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "\n" not in k + v and "\r" not in k + v
        for k, v in headers.items()
    ):
        raise InvalidRequest("headers must be an object of string header values", param=f"{at}.headers")
    headers = dict(headers)
    authorization = tool.get("authorization")
    if authorization is not None:
        if not isinstance(authorization, str) or "\n" in authorization or "\r" in authorization:
            raise InvalidRequest("authorization must be a string token", param=f"{at}.authorization")
        headers["Authorization"] = f"Bearer {authorization}"
    allowed, read_only = _allowed_tools(tool.get("allowed_tools"), f"{at}.allowed_tools")
    return ServerSpec(
        index=index,
        label=label,
        parts=parts,
        sse=parts.path.rstrip("/").endswith("/sse"),
        headers=headers,
        allowed=allowed,
        read_only=read_only,
        policy=policy,
    )


def _allowed_tools(value: Any, param: str) -> tuple[frozenset[str] | None, bool]:
    """`allowed_tools`: a list of names, or {"tool_names": [...], "read_only": bool}, or null."""
    if value is None:
        return None, False
    names, read_only = value, False
    if isinstance(value, dict):
        names, read_only = value.get("tool_names"), value.get("read_only") or False
        if not isinstance(read_only, bool) or set(value) - {"tool_names", "read_only"}:
            raise InvalidRequest("allowed_tools takes tool_names and read_only", param=param)
    if names is None:
        return None, read_only
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidRequest("allowed_tools must list tool names (strings)", param=param)
    return frozenset(names), read_only


def _list_item(conn: McpConnection) -> dict[str, Any]:
    tools = []
    for tool in conn.tools:
        annotations = (
            tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else None
        )
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


def call_output_text(item: dict[str, Any]) -> str:
    """What the model is told an `mcp_call` item gave: its output, or its error in words."""
    if item.get("output") is not None:
        return str(item["output"])
    error = item.get("error") or {}
    if isinstance(error, dict) and error.get("type") == "mcp_tool_execution_error":
        content = error.get("content") or []
        texts = [c.get("text", "") for c in content if isinstance(c, dict)]
        return "Error: " + ("\n".join(t for t in texts if t) or json.dumps(content))
    if isinstance(error, dict):
        return f"Error: {error.get('message') or 'the tool call failed'}"
    return f"Error: {error or 'the tool call failed'}"


def _as_dict(tool: Any) -> Any:
    """Request tools as plain dicts (the runner may hand over the request schema's models)."""
    if hasattr(tool, "model_dump"):
        return tool.model_dump(exclude_none=True, by_alias=True)
    return tool


_default_settings: McpSettings | None = None


def default_settings() -> McpSettings:
    """McpSettings.from_env(), read once (call it at start so a bad value stops the start)."""
    global _default_settings
    if _default_settings is None:
        _default_settings = McpSettings.from_env()
    return _default_settings


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
    async def open(cls, tools: list[Any] | None, settings: McpSettings | None = None) -> McpToolset | None:
        """None when `tools` (the request's whole list, so errors name `tools[i]`) has no `mcp`
        tool. Every entry is validated (400 naming the field) before any server is contacted; then
        all servers are connected at once (503/502 naming the server when one cannot serve)."""
        settings = settings or default_settings()
        listed = [_as_dict(t) for t in tools or []]
        entries = [(i, t) for i, t in enumerate(listed) if isinstance(t, dict) and t.get("type") == "mcp"]
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
        from infergate.responses.mcp_client import McpConnection  # loads the mcp package

        connections = [McpConnection(s, settings) for s in specs]
        results = await asyncio.gather(*(c.start() for c in connections), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(c.close() for c in connections))
            raise failures[0]
        taken = {str(t.get("name")) for t in listed if isinstance(t, dict) and t.get("type") == "function"}
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
                function: dict[str, Any] = {
                    "name": name,
                    "parameters": tool.input_schema or {"type": "object"},
                }
                if tool.description:
                    function["description"] = tool.description
                self._chat_tools.append({"type": "function", "function": function})

    @property
    def max_steps(self) -> int:
        """Model turns the tool loop may take; past them the response is incomplete."""
        return self.settings.max_steps

    def chat_tools(self) -> list[dict[str, Any]]:
        """OpenAI chat function-tool definitions for the model."""
        return [dict(t) for t in self._chat_tools]

    def owns(self, name: str) -> bool:
        return name in self._by_name

    def server_of(self, name: str) -> tuple[str, str]:
        """(server_label, the MCP server's own tool name) of a chat tool name this toolset owns."""
        conn, tool = self._by_name[name]
        return conn.spec.label, str(tool.name)

    def server_label(self, name: str) -> str:
        return self._by_name[name][0].spec.label

    def tool_name(self, name: str) -> str:
        """The MCP server's own name of a chat tool name (they differ when namespaced)."""
        return str(self._by_name[name][1].name)

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
            error: Any = {
                "type": "mcp_protocol_error",
                "code": INVALID_PARAMS,
                "message": "the tool arguments are not a JSON object",
            }
            output = None
        else:
            output, error = await conn.call(tool.name, arguments, self.settings.call_timeout)
        if error is not None:
            item.update(error=error, status="failed")
            return item
        limit = self.settings.max_output_chars
        item["output"] = output if len(output or "") <= limit else f"{output[:limit]}\n[output truncated]"
        return item

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._connections))
