"""Calls into this same app from a panel route, through the full middleware and route stack.

The panel changes keys, edits limits and runs playground requests by calling the public API
in-process: the very code path a client uses (auth, admission and limits, metering, revocation
fan-out, metrics, access log), with nothing copied. No socket is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Message


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = field(default=None, repr=False)

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    def error_message(self) -> str:
        try:
            return str(self.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            return f"HTTP {self.status}"


def _scope(request: Request, method: str, path: str, token: str, body: bytes) -> dict[str, Any]:
    path, _, query = path.partition("?")
    headers = [
        (b"host", request.headers.get("host", "localhost").encode()),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"user-agent", b"infergate-panel"),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": request.url.scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": request.scope.get("client"),
        "server": request.scope.get("server"),
        "extensions": {},
    }


async def call(
    request: Request, method: str, path: str, token: str, payload: Any = None, stream: bool = False
) -> Answer:
    """Run one API request in-process. With `stream`, the answer's body arrives through
    `Answer.chunks`; closing that iterator early tells the API the client went away."""
    body = orjson.dumps(payload) if payload is not None else b""
    scope = _scope(request, method, path, token, body)
    outbox: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await outbox.put(message)

    async def run() -> None:
        try:
            await request.app(scope, receive, send)
        finally:
            await outbox.put(None)

    task = asyncio.create_task(run())
    start = await outbox.get()
    if start is None or start["type"] != "http.response.start":
        await task  # the app ended without answering: its exception, if any, surfaces here
        raise RuntimeError(f"{method} {path} gave no answer")
    headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                message = await outbox.get()
                if message is None:
                    return
                if message["type"] == "http.response.body":
                    if message.get("body"):
                        yield message["body"]
                    if not message.get("more_body"):
                        return
        finally:
            gone.set()  # the reader left (or the answer ended): the app sees a disconnect
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    answer = Answer(start["status"], headers, chunks=chunks())
    if not stream:
        answer.body = b"".join([c async for c in answer.chunks])  # type: ignore[union-attr]
        answer.chunks = None
    return answer
