"""A local stand-in for an OpenAI-compatible images upstream: a real aiohttp server on a real socket."""

from __future__ import annotations

import base64
import io
from typing import Any

from aiohttp import web
from PIL import Image

from tests.support.aio_server import ThreadedAiohttpServer


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


class ImagesUpstream(ThreadedAiohttpServer):
    """`POST /v1/images/generations`; the upstream model name picks the behaviour:
    "img" (base64 and usage), "img-url" (links to /files/N.png, no usage), "img-fail-429",
    "img-fail-400", "img-badjson"."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self._generate)
        app.router.add_get("/files/{n}.png", self._file)

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
