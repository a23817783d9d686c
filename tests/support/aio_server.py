"""The skeleton every local stand-in server shares: a real aiohttp server on a free 127.0.0.1 port,
run by its own event loop in a daemon thread, so synchronous tests and server processes reach it
over a real socket. A stand-in subclasses it and adds its routes in `routes`."""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from aiohttp import web


class ThreadedAiohttpServer:
    # True: a client that hangs up cancels its handler (a stand-in that counts abandoned streams)
    handler_cancellation = False

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (`.../v1`)."""
        return f"{self.root_url}/v1"

    def start(self) -> Self:
        threading.Thread(target=self._serve, daemon=True).start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, handler_cancellation=self.handler_cancellation)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
