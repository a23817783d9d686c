"""Connections to the MCP servers of one request, with the official `mcp` package's client.

`McpConnection` holds one server's session, over streamable HTTP, or SSE when the URL's path ends
in `/sse`, through an HTTP client whose network backend dials only addresses the SSRF guard
(mcp_guard.py) permits. Importing this module loads the `mcp` package: mcp.py imports it lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpcore2
import httpx2
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import PaginatedRequestParams

from infergate.errors import Unavailable, UpstreamError
from infergate.responses.mcp_guard import AddressPolicy, resolve

if TYPE_CHECKING:
    from infergate.responses.mcp import McpSettings, ServerSpec

REQUEST_TIMEOUT = -32001  # JSON-RPC code the MCP SDK uses for a request that timed out
INVALID_PARAMS = -32602
CONNECTION_CLOSED = -32000


class PinnedBackend(httpcore2.AsyncNetworkBackend):
    """The connect-time check (3): resolves the host itself and dials only addresses the policy permits."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise httpcore2.ConnectError(f"cannot resolve {host}: {exc}") from None
        permitted = [ip for ip in addresses if self.policy.permits(ip)]
        if not permitted or len(permitted) != len(addresses):
            raise httpcore2.ConnectError(f"{host} resolves to an address that is not allowed")
        error: Exception | None = None
        for ip in permitted:  # TLS still verifies the certificate against `host` (httpcore passes it)
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore2.ConnectError as exc:
                error = exc
        raise error or httpcore2.ConnectError(f"cannot connect to {host}")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class PinnedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport on a PinnedBackend; no proxies from the environment (they would dial for us)."""

    def __init__(self, policy: AddressPolicy) -> None:
        super().__init__(trust_env=False)
        # The transport builds its pool without a backend hook, so the pool is rebuilt with one.
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            network_backend=PinnedBackend(policy),
        )


def pinned_client(
    policy: AddressPolicy,
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    """An HTTP client for one MCP server, with the MCP transports' usual 30 s / 300 s read timeouts."""
    return httpx2.AsyncClient(
        transport=PinnedTransport(policy),
        headers=headers,
        timeout=timeout or httpx2.Timeout(30.0, read=300.0),
        auth=auth,
        trust_env=False,
    )


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
        except asyncio.CancelledError:
            await self.close()
            raise
        except Exception as exc:
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
                    streams = await stack.enter_async_context(
                        streamable_http_client(spec.parts.geturl(), http_client=client)
                    )
                read, write = streams[0], streams[1]
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                self.tools = await self._list(session)
                self.session = session
                self._ready.set_result(None)
                await self._stop.wait()
        except asyncio.CancelledError:
            self.session = None
            self._ready.cancel()  # start() gave up waiting, or close() ended the session
            raise
        except BaseException as exc:  # reported to start(); a failure later on shows in call()
            self.session = None
            if not self._ready.done():
                self._ready.set_exception(exc)

    async def _list(self, session: ClientSession) -> list[Any]:
        tools: list[Any] = []
        cursor: str | None = None
        for _ in range(100):  # a server that pages forever is cut off
            params = PaginatedRequestParams(cursor=cursor) if cursor else None
            result = await session.list_tools(params=params)
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
        """End the session: politely when it is up (streamable HTTP says goodbye), else at once."""
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            if self.session is not None:
                await asyncio.wait({task}, timeout=5)
            if not task.done():  # still connecting, or stuck: cancelled
                task.cancel()
                await asyncio.wait({task})
        except asyncio.CancelledError:  # the caller itself is cancelled: do not leave the task behind
            task.cancel()
            raise

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> tuple[str | None, Any]:
        """(output text, None) or (None, the OpenAI-shaped error) of one tool call."""
        session = self.session
        if session is None:
            return None, protocol_error(CONNECTION_CLOSED, f"the connection to '{self.spec.label}' is closed")
        try:
            result = await asyncio.wait_for(session.call_tool(name, arguments), timeout)
        except TimeoutError:
            return None, protocol_error(REQUEST_TIMEOUT, f"the tool call timed out after {timeout:g} s")
        except MCPError as exc:
            return None, protocol_error(exc.error.code, exc.error.message)
        except Exception as exc:  # transport failures are the item's error, never the request's
            cause = root_cause(exc)
            if isinstance(cause, httpx2.HTTPStatusError):
                code = cause.response.status_code
                return None, {"type": "http_error", "code": code, "message": f"HTTP {code}"}
            return None, protocol_error(CONNECTION_CLOSED, f"{type(cause).__name__}: {cause}"[:500])
        if result.is_error:
            content = [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in result.content]
            return None, {"type": "mcp_tool_execution_error", "content": content}
        if not result.content and result.structured_content is not None:
            return json.dumps(result.structured_content), None
        return content_text(result.content), None


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
        return UpstreamError(f"MCP server '{spec.label}' could not start a session: {exc}"[:300], param=param)
    if isinstance(exc, httpx2.TransportError | OSError | TimeoutError):
        return Unavailable(f"MCP server '{spec.label}' cannot be reached: {exc}"[:300], param=param)
    return UpstreamError(f"MCP server '{spec.label}' failed: {type(exc).__name__}: {exc}"[:300], param=param)


def protocol_error(code: int, message: str) -> dict[str, Any]:
    return {"type": "mcp_protocol_error", "code": code, "message": message}


def content_text(blocks: list[Any]) -> str:
    """A tool result as the model reads it: text parts as they are, other parts as JSON."""
    parts = []
    for block in blocks:
        if getattr(block, "type", None) == "text":
            parts.append(block.text)
        else:
            parts.append(json.dumps(block.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return "\n".join(parts)
