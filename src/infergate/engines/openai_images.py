"""Backend for an OpenAI-compatible images upstream (`POST {base_url}/images/generations`).

The request is forwarded with the model name swapped for the upstream's; OpenAI's defaults are
left to the upstream (a field the client did not set is not sent). Images come back as base64 or,
from some upstreams (dall-e), as URLs which are fetched here: the client always gets the bytes from
us (base64, or our own signed URL), never a link to the provider. Usage is the upstream's when it
reports one, else counted as the local backends count it.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from infergate.catalog import ModelSpec
from infergate.engines.base import GeneratedImage, ImageEngine, ImageRequest, ImageResult
from infergate.engines.image_common import content_type_of, image_usage, quality_of, sniff_size
from infergate.engines.openai_upstream import OpenAIUpstreamEngine, transport_failure
from infergate.errors import UpstreamError
from infergate.observability import UPSTREAM_ERRORS
from infergate.schemas.images import CONTENT_TYPES
from infergate.usage import Usage

MAX_IMAGE_BYTES = 64 * 1024 * 1024  # a linked image larger than this is refused (502)


class OpenAIImagesEngine(ImageEngine):
    # the chat upstream's mapping of upstream statuses to our errors (400 -> 400, 429 -> 429, ...)
    _upstream_failure = OpenAIUpstreamEngine._upstream_failure

    def __init__(self, spec: ModelSpec, data_dir: Path | None = None) -> None:
        super().__init__(spec, data_dir)
        assert spec.base_url
        self.url = spec.base_url.rstrip("/") + "/images/generations"
        self.headers = {"content-type": "application/json"}
        if spec.api_key_env:
            self.headers["authorization"] = f"Bearer {os.environ.get(spec.api_key_env, '')}"
        self.timeout = aiohttp.ClientTimeout(total=spec.timeout, sock_connect=spec.connect_timeout)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60), timeout=self.timeout
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def _count(self, kind: str) -> None:
        UPSTREAM_ERRORS.labels(self.spec.id, kind).inc()

    def _payload(self, request: ImageRequest) -> bytes:
        body: dict[str, Any] = {"model": self.spec.upstream_name, "prompt": request.prompt, "n": request.n}
        body["size"] = request.size
        for name, value, default in (
            ("quality", request.quality, "auto"),
            ("background", request.background, "auto"),
            ("output_format", request.output_format, "png"),
            ("output_compression", request.output_compression, None),
            ("user", request.user, None),
        ):
            if value != default:
                body[name] = value
        return orjson.dumps(body)

    async def generate(self, request: ImageRequest) -> ImageResult:
        assert self.session is not None, "engine not started"
        try:
            async with self.session.post(
                self.url, data=self._payload(request), headers=self.headers
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise self._upstream_failure(
                        response.status, raw.decode(errors="replace"), response.headers
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_failure(self.spec, exc, self._count) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._count("bad_json")
            raise UpstreamError(f"upstream {self.spec.id} answered with invalid JSON") from None
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            self._count("bad_shape")
            raise UpstreamError(f"upstream {self.spec.id} answered without images (data)")
        fmt = str(body.get("output_format") or request.output_format)
        images = [await self._image(item, fmt, request) for item in items]
        usage = Usage.from_openai(body.get("usage"))
        if usage is None:
            usage = image_usage(request, len(images))
        usage.images = len(images)
        return ImageResult(
            images=images,
            usage=usage,
            quality=str(body.get("quality") or quality_of(request.quality)),
            background=str(body.get("background") or "opaque"),
            output_format=fmt,
        )

    async def _image(self, item: Any, fmt: str, request: ImageRequest) -> GeneratedImage:
        if isinstance(item, dict) and isinstance(item.get("b64_json"), str):
            try:
                data = base64.b64decode(item["b64_json"], validate=True)
            except (binascii.Error, ValueError):
                self._count("bad_shape")
                raise UpstreamError(f"upstream {self.spec.id} sent an image that is not base64") from None
        elif isinstance(item, dict) and isinstance(item.get("url"), str):
            data = await self._fetch(item["url"])
        else:
            self._count("bad_shape")
            raise UpstreamError(f"upstream {self.spec.id} sent an image with neither b64_json nor url")
        width, height = sniff_size(data) or (request.width, request.height)
        return GeneratedImage(
            data=data,
            width=width,
            height=height,
            content_type=content_type_of(data, CONTENT_TYPES.get(fmt, "image/png")),
        )

    async def _fetch(self, url: str) -> bytes:
        assert self.session is not None
        if not url.startswith(("http://", "https://")):
            raise UpstreamError(f"upstream {self.spec.id} linked an image at a non-HTTP URL")
        try:
            async with self.session.get(url) as response:
                if response.status != 200:
                    raise UpstreamError(f"upstream {self.spec.id}'s image link answered {response.status}")
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise UpstreamError(
                            f"upstream {self.spec.id} linked an image over {MAX_IMAGE_BYTES} bytes"
                        )
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._count("broken")
            raise UpstreamError(f"upstream {self.spec.id}'s image link failed: {exc}") from None
        return b"".join(chunks)
