"""Client-disconnect aware responses: when the client goes, the work in flight is cancelled.

Starlette only notices a gone client on the next write; a model that is still thinking (or an
upstream still prefilling) would go on burning compute. Here a watcher task waits for
`http.disconnect` alongside the work and cancels it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from infergate.errors import InfergateError
from infergate.http_errors import INTERNAL_ERROR, error_payload
from infergate.metering import CLIENT_GONE_STATUS

T = TypeVar("T")
log = logging.getLogger("infergate.streaming")


class ClientGone(InfergateError):
    status = CLIENT_GONE_STATUS
    type = "client_closed_request"
    code = "client_closed_request"


def stream_error_event(exc: Exception, request_id: str) -> bytes:
    """A failure after the stream started: one `data: {"error": ...}` event (then [DONE]).
    Our own errors say what went wrong; anything else is logged with its traceback."""
    if isinstance(exc, InfergateError):
        status, error = exc.status, exc.to_dict()
    else:
        log.error("unhandled error mid-stream (request %s)", request_id, exc_info=exc)
        status, error = 500, dict(INTERNAL_ERROR)
    return b"data: " + error_payload(status, error, request_id, "/v1") + b"\n\n"


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
            await self._reap(sender)

    async def _reap(self, sender: asyncio.Future[None]) -> None:
        """Wait for the sender to end and close the events; a failure there is logged, not lost.
        (A send to a client that left raises OSError-like errors: that is the client's doing.)"""
        try:
            await sender
        except asyncio.CancelledError:
            pass
        except OSError as exc:
            log.info("stream ended early: client connection lost (%s)", exc)
        except Exception:
            log.exception("stream sender failed")
        aclose = getattr(self.events, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                log.exception("closing the stream's events failed")
