"""Client-disconnect aware responses: when the client goes, the work in flight is cancelled.

Starlette only notices a gone client on the next write; a model that is still thinking (or an
upstream still prefilling) would go on burning compute. Here a watcher task waits for
`http.disconnect` alongside the work and cancels it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from infergate.errors import InfergateError

T = TypeVar("T")


class ClientGone(InfergateError):
    status = 499
    type = "client_closed_request"
    code = "client_closed_request"


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work` in this task; if the client disconnects first, cancel it and raise ClientGone.

    One watcher task that cancels this one (cheaper than racing two tasks with asyncio.wait).
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_disconnect(receive)
        gone = True
        current.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientGone("client closed the request") from None
        raise
    finally:
        if not watcher.done():
            watcher.cancel()


class SSEResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not sender.done():
                sender.cancel()  # the client left: CancelledError runs the generator's cleanup
            with contextlib.suppress(BaseException):
                await sender
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()
