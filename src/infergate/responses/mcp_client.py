"""Connections to the MCP servers of one request (the official `mcp` package's client).

`parse_spec` validates one `mcp` tool entry (400 naming the field); `McpConnection` holds one
server's session, over streamable HTTP, or SSE when the URL's path ends in `/sse`, through an
HTTP client pinned by the SSRF guard (mcp_guard.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult

import httpx2
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from infergate.errors import InvalidRequest, Unavailable, UpstreamError
from infergate.responses.mcp_guard import AddressPolicy, check_url, pinned_client

if TYPE_CHECKING:
    from infergate.responses.mcp import McpSettings


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


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


class McpConnection:
    """One MCP server session, owned by its own task (the SDK's task groups must be entered and left
    by one task, while the tool loop may call from another)."""

    def __init__(self, spec: ServerSpec, settings: McpSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.session: ClientSession | None = None
        self.tools: list[Any] = []
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp:{self.spec.label}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.settings.connect_timeout)
        except TimeoutError:
            await self.close()
            raise Unavailable(
                f"MCP server '{self.spec.label}' did not answer within {self.settings.connect_timeout:g} s",
                param=f"tools[{self.spec.index}].server_url",
            ) from None
        except BaseException as exc:
            await self.close()
            raise connect_error(self.spec, exc) from None

    async def _run(self) -> None:
        spec = self.spec
        try:
            async with contextlib.AsyncExitStack() as stack:
                if spec.sse:

                    def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> Any:
                        return pinned_client(spec.policy, headers, timeout, auth)

                    streams = await stack.enter_async_context(
                        sse_client(spec.parts.geturl(), headers=spec.headers, httpx_client_factory=factory)
                    )
                else:
                    client = await stack.enter_async_context(pinned_client(spec.policy, spec.headers))
                    streams = await stack.enter_async_context(streamable_http_client(spec.parts.geturl(), http_client=client))
                read, write = streams[0], streams[1]
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                self.tools = await self._list(session)
                self.session = session
                self._ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001  (reported to start(); a later failure shows in call())
            if not self._ready.done():
                self._ready.set_exception(exc)
            self.session = None
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _list(self, session: ClientSession) -> list[Any]:
        tools: list[Any] = []
        cursor: str | None = None
        for _ in range(100):  # a server that pages forever is cut off
            result = await session.list_tools(cursor=cursor) if cursor else await session.list_tools()
            tools.extend(result.tools)
            cursor = result.next_cursor
            if not cursor:
                break
        spec = self.spec
        return [
            t
            for t in tools
            if (spec.allowed is None or t.name in spec.allowed)
            and (not spec.read_only or bool(t.annotations and t.annotations.read_only_hint))
        ]

    async def close(self) -> None:
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except BaseException:  # noqa: BLE001  (a stuck or failed session is cancelled; closing never fails)
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def connect_error(spec: ServerSpec, exc: BaseException) -> Exception:
    exc = root_cause(exc)
    param = f"tools[{spec.index}].server_url"
    if isinstance(exc, httpx2.HTTPStatusError):
        return UpstreamError(
            f"MCP server '{spec.label}' answered HTTP {exc.response.status_code}", param=param
        )
    if isinstance(exc, MCPError):
        return UpstreamError(f"MCP server '{spec.label}' refused the session: {exc}"[:300], param=param)
    if isinstance(exc, httpx2.TransportError | OSError | TimeoutError):
        return Unavailable(f"MCP server '{spec.label}' cannot be reached: {exc}"[:300], param=param)
    return UpstreamError(f"MCP server '{spec.label}' failed: {type(exc).__name__}: {exc}"[:300], param=param)
