"""A local stand-in for an OpenAI-compatible images upstream: a real aiohttp server on a real socket."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from typing import Any

from aiohttp import web
from PIL import Image


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


class ImagesUpstream:
    """`POST /v1/images/generations`; the upstream model name picks the behaviour:
    "img" (base64 and usage), "img-url" (links to /files/N.png, no usage), "img-fail-429",
    "img-fail-400", "img-badjson"."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ImagesUpstream:
        threading.Thread(target=self._serve, daemon=True).start()
        assert self._ready.wait(10), "stand-in did not start"
        return self

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/images/generations", self._generate)
        app.router.add_get("/files/{n}.png", self._file)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    async def _file(self, request: web.Request) -> web.Response:
        return web.Response(
            body=png(48, 32, (0, int(request.match_info["n"]) * 50, 0)), content_type="image/png"
        )

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        model, n = body["model"], body.get("n", 1)
        if model.startswith("img-fail-"):
            status = int(model.rsplit("-", 1)[1])
            return web.json_response({"error": {"message": f"stand-in {status}"}}, status=status)
        if model == "img-badjson":
            return web.Response(text="<html>", content_type="text/html")
        if model == "img-url":
            return web.json_response(
                {
                    "created": 1,
                    "data": [{"url": f"http://127.0.0.1:{self.port}/files/{i}.png"} for i in range(n)],
                }
            )
        data = [{"b64_json": base64.b64encode(png(32, 32, (i * 60, 0, 0))).decode()} for i in range(n)]
        usage = {
            "input_tokens": 7,
            "input_tokens_details": {"text_tokens": 7, "image_tokens": 0},
            "output_tokens": 272 * n,
            "total_tokens": 7 + 272 * n,
        }
        return web.json_response(
            {
                "created": 1,
                "data": data,
                "usage": usage,
                "background": "opaque",
                "output_format": "png",
                "quality": "low",
            }
        )
