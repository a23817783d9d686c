"""A small local MCP server for the tests: the official `mcp` package's MCPServer (FastMCP in mcp 1.x)
served by uvicorn on real sockets, in a thread of the test process.

One `McpTestServer` serves the same tools over both transports, each on its own free port:
  streamable HTTP  at `http_url` (http://127.0.0.1:PORT/mcp)
  SSE              at `sse_url`  (http://127.0.0.1:PORT/sse)
Tools:
  add(a, b)        the sum, as text
  lookup(key)      a fixed fact from FACTS ("unknown" otherwise); annotated read-only
                   (with `McpTestServer(broken=True)` it raises instead)
  fail(reason)     raises: the call answers with isError (a tool-execution error)
  slow(seconds)    sleeps, for call timeouts
Every HTTP request's headers are kept in `headers` (to check `headers` / `authorization` forwarding),
every tool call in `calls`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

FACTS = {"capital-of-france": "Paris", "answer": "42"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class McpTestServer:
    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.headers: list[dict[str, str]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.http_port = _free_port()
        self.sse_port = _free_port()
        self._servers: list[uvicorn.Server] = []
        self._threads: list[threading.Thread] = []

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/mcp"

    @property
    def sse_url(self) -> str:
        return f"http://127.0.0.1:{self.sse_port}/sse"

    def _build(self) -> MCPServer:
        mcp = MCPServer("infergate-test-tools")
        calls = self.calls

        @mcp.tool(description="Add two integers and return the sum.")
        def add(a: int, b: int) -> str:
            calls.append(("add", {"a": a, "b": b}))
            return str(a + b)

        @mcp.tool(
            description="Look up a fact by its key.",
            annotations=ToolAnnotations(read_only_hint=True),
        )
        def lookup(key: str) -> str:
            calls.append(("lookup", {"key": key}))
            if self.broken:
                raise LookupError(f"the fact store is down (asked for {key})")
            return FACTS.get(key, "unknown")

        @mcp.tool(description="Always fails with the given reason.")
        def fail(reason: str) -> str:
            calls.append(("fail", {"reason": reason}))
            raise RuntimeError(f"tool failed: {reason}")

        @mcp.tool(description="Sleep for some seconds, then answer 'done'.")
        async def slow(seconds: float) -> str:
            calls.append(("slow", {"seconds": seconds}))
            await asyncio.sleep(seconds)
            return "done"

        return mcp

    def _recording(self, app: Any) -> Any:
        """ASGI wrapper that keeps each HTTP request's headers."""

        async def wrapped(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.headers.append({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
            await app(scope, receive, send)

        return wrapped

    def start(self) -> McpTestServer:
        apps = [
            (self._build().streamable_http_app(), self.http_port),
            (self._build().sse_app(), self.sse_port),
        ]
        for app, port in apps:
            config = uvicorn.Config(
                self._recording(app), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        deadline = time.monotonic() + 15
        while not all(s.started for s in self._servers):
            if time.monotonic() > deadline or not all(t.is_alive() for t in self._threads):
                raise RuntimeError("MCP test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
            server.force_exit = True  # open MCP sessions (SSE streams) would hold the shutdown
        for thread in self._threads:
            thread.join(10)
