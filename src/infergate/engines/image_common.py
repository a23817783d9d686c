"""What the image engines and their callers share: image token counts, encoding, and the fal-style
job runner (async-invoke) that generates, stores the files and answers in fal's output shape.

Image tokens follow gpt-image-1's published counts for a 1024x1024 image (272 low, 1056 medium,
4160 high quality), scaled by area: the document's example answer (medium, 1024x1024) says
`output_tokens: 1056`. Every image backend reports them the same way, so `output_price` (per 1M
tokens) prices images as the document's models are priced; `image_price` adds a price per image.
"""

from __future__ import annotations

import io
import math
import secrets
import struct
import time
from typing import TYPE_CHECKING, Any

from infergate.catalog import ModelSpec
from infergate.engines.base import ImageEngine, ImageRequest, ImageResult, RequestContext
from infergate.schemas.images import CONTENT_TYPES, FalImageInput
from infergate.tokens import count_tokens
from infergate.usage import Usage

if TYPE_CHECKING:
    from infergate.storage.media import MediaStore

SQUARE_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
QUALITY_NAMES = {"auto": "medium", "standard": "medium", "hd": "high"}
MAX_SEED = 2**63 - 1


def quality_of(requested: str | None) -> str:
    """The quality answered (and billed): OpenAI's auto/standard are medium, hd is high."""
    requested = requested or "auto"
    return QUALITY_NAMES.get(requested, requested)


def image_tokens(width: int, height: int, quality: str) -> int:
    base = SQUARE_TOKENS[quality_of(quality)]
    return max(1, math.ceil(base * width * height / (1024 * 1024)))


def image_usage(request: ImageRequest, made: int) -> Usage:
    """Prompt tokens (counted locally) and image tokens for `made` images of the request's size."""
    return Usage(
        input_tokens=count_tokens(request.prompt),
        output_tokens=made * image_tokens(request.width, request.height, request.quality),
        images=made,
    )


def render_usage(usage: Usage) -> dict[str, Any]:
    """The answer's `usage`, in the document's shape."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"text_tokens": usage.input_tokens, "image_tokens": 0},
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def new_seed() -> int:
    return secrets.randbits(63)


def seeds_for(request: ImageRequest) -> list[int]:
    """Image i of a request uses seed + i: the images differ, and each is reproducible."""
    base = request.seed if request.seed is not None else new_seed()
    return [(base + i) % (MAX_SEED + 1) for i in range(request.n)]


def encode_image(image: Any, fmt: str, compression: int | None = None) -> bytes:
    """A PIL image as png/jpeg/webp bytes (jpeg has no alpha: flattened to RGB)."""
    out = io.BytesIO()
    if fmt == "png":
        # level 6: zlib's default balance; 9 costs ~3x the time for a few percent (OpenAI's
        # output_compression applies to jpeg and webp only)
        image.save(out, format="PNG", compress_level=6)
    elif fmt == "jpeg":
        image.convert("RGB").save(
            out, format="JPEG", quality=95 if compression is None else 100 - compression
        )
    else:
        image.save(out, format="WEBP", quality=90 if compression is None else 100 - compression)
    return out.getvalue()


def sniff_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG, JPEG or WebP header (upstream images), None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        if data[12:16] == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if data[12:16] == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return w, h
            i += 2 + length
    return None


def content_type_of(data: bytes, fallback: str) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:2] == b"\xff\xd8":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return fallback


# -- fal-style jobs --------------------------------------------------------------------------------


def fal_image_request(params: FalImageInput, spec: ModelSpec, context: RequestContext) -> ImageRequest:
    """The engine request of a validated fal input."""
    width, height = params.dimensions(spec)
    return ImageRequest(
        prompt=params.prompt,
        context=context,
        n=params.num_images,
        width=width,
        height=height,
        size=f"{width}x{height}",
        negative_prompt=params.negative_prompt or None,
        steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        seed=params.seed,
        output_format=params.output_format,
        safety_checker=params.enable_safety_checker,
    )


async def run_fal_image_job(
    engine: ImageEngine,
    params: FalImageInput,
    context: RequestContext,
    media: MediaStore,
    *,
    base_url: str | None = None,
) -> tuple[dict[str, Any], Usage]:
    """Generate the images of a fal-style input, store them, and return fal's output object
    `{"images": [{url, width, height, content_type, file_name, file_size}], "seed", "prompt",
    "has_nsfw_concepts", "timings"}` with the request's Usage (the caller bills it).

    URLs are signed with the media store's TTL; `base_url` None gives `INFERGATE_PUBLIC_URL` or
    a path relative to the server (see `MediaStore.refresh_urls` to re-sign them when read).
    With `sync_mode` the images are data: URIs and nothing is stored (fal's meaning)."""
    request = fal_image_request(params, engine.spec, context)
    engine.check(request)
    started = time.perf_counter()
    result: ImageResult = await engine.generate(request)
    usage = result.usage or image_usage(request, len(result.images))
    images = []
    for index, image in enumerate(result.images):
        ext = image.content_type.removeprefix("image/")
        entry: dict[str, Any] = {
            "width": image.width,
            "height": image.height,
            "content_type": image.content_type,
        }
        if params.sync_mode:
            import base64

            entry["url"] = f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"
        else:
            ref = await media.save(
                image.data,
                content_type=image.content_type,
                key_uuid=context.key_uuid,
                file_name=f"{context.request_id}-{index}.{ext}",
                meta={"model": engine.spec.id, "seed": image.seed, "request_id": context.request_id},
            )
            entry.update(url=media.signed_url(ref, base_url), file_name=ref.file_name, file_size=ref.size)
        images.append(entry)
    seeds = [img.seed for img in result.images]
    output = {
        "images": images,
        "seed": seeds[0] if seeds else None,
        "seeds": seeds,
        "prompt": params.prompt,
        "has_nsfw_concepts": [img.nsfw for img in result.images],
        "timings": result.timings or {"inference": round(time.perf_counter() - started, 4)},
    }
    return output, usage


__all__ = ["CONTENT_TYPES", "encode_image", "image_tokens", "image_usage", "run_fal_image_job"]
