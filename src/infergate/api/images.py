"""POST /v1/images/generations: text to image (OpenAI's shape, as the product document shows it).

Validated, checked against the model (kind, sizes, what its backend can make) before anything is
billed; then admitted and billed once: prompt tokens in, image tokens out (gpt-image-1's counts),
plus the model's per-image price. Images come back as base64 (`b64_json`, the default) or as
signed, expiring URLs of the media store (`response_format: "url"`). The seed of every image is
in the answer (`data[].seed`, beyond OpenAI's fields), in the log and in the stored file's record.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import authenticate, json_body, json_response, platform_of, request_id_of, validate
from infergate.api.streaming import run_until_disconnect
from infergate.catalog import ModelSpec
from infergate.engines.base import ImageEngine, ImageRequest, ImageResult, RequestContext
from infergate.engines.image_common import image_tokens, render_usage
from infergate.errors import InvalidRequest, NotFound, Unavailable
from infergate.metering import Charge
from infergate.platform import Platform
from infergate.schemas.common import INFERENCE_ERRORS
from infergate.schemas.images import ImageGenerationRequest, resolve_size
from infergate.usage import unit_cost_nano

router = APIRouter()
log = logging.getLogger("infergate.images")
ENDPOINT = "images.generations"
INLINE_B64_BYTES = 512 * 1024  # larger answers are base64-encoded in a worker thread

OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ImageGenerationRequest.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
            }
        },
    }
}


def image_engine(platform: Platform, model_id: str) -> tuple[ModelSpec, ImageEngine]:
    """404 for an unknown model, 400 for one of another kind, 503 (with the reason, e.g. the
    missing images extra) for one that cannot serve."""
    spec = platform.catalog.get(model_id)
    if spec is not None and spec.kind != "image":
        raise InvalidRequest(
            f"The model '{model_id}' is a {spec.kind} model, not an image model.",
            param="model",
            code="model_not_supported",
        )
    if spec is None:
        raise NotFound(
            f"The model '{model_id}' does not exist; GET /v1/models lists the available ones.",
            param="model",
            code="model_not_found",
        )
    spec, engine = platform.engine_for(spec.id, "image", ImageEngine)  # spec.id: model_id may be an alias
    reason = engine.readiness()
    if reason is not None:
        raise Unavailable(f"The model '{model_id}' cannot serve: {reason}", code="model_unavailable")
    return spec, engine


def image_request(params: ImageGenerationRequest, spec: ModelSpec, context: RequestContext) -> ImageRequest:
    if params.stream:
        raise InvalidRequest("Streaming partial images is not supported; omit stream.", param="stream")
    if params.background == "transparent" and params.output_format == "jpeg":
        raise InvalidRequest("jpeg has no transparency: use png or webp.", param="background")
    size, width, height = resolve_size(params.size, spec)
    return ImageRequest(
        prompt=params.prompt,
        context=context,
        n=params.n or 1,
        width=width,
        height=height,
        size=size,
        negative_prompt=params.negative_prompt,
        steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        seed=params.seed,
        output_format=params.output_format or "png",
        output_compression=params.output_compression,
        quality=params.quality or "auto",
        background=params.background or "auto",
        user=params.user,
    )


@router.post(
    "/images/generations",
    responses=INFERENCE_ERRORS,
    openapi_extra=OPENAPI,
    summary="Create images from a text prompt (OpenAI compatible)",
)
async def create_images(request: Request) -> Response:
    started = time.perf_counter()
    key = await authenticate(request)
    params = validate(ImageGenerationRequest, await json_body(request))
    platform = platform_of(request)
    spec, engine = image_engine(platform, params.model)
    request.scope["state"]["model"] = spec.id
    request_id = request_id_of(request)
    context = RequestContext(request_id=request_id, key_uuid=key.uuid)
    job = image_request(params, spec, context)
    engine.check(job)  # what this backend cannot make is a 400 before anything is billed
    meter = await platform.admit(
        Charge(spec, request_id, key.uuid, ENDPOINT, started),
        max_output_tokens=job.n * image_tokens(job.width, job.height, job.quality),
        extra_cost_nano=unit_cost_nano(spec.image_price, job.n),
        prompt_texts=lambda: [params.prompt],
        live_usage=True,  # nothing to estimate: images are made whole or not at all
    )
    context.usage = meter.usage
    try:
        result = await run_until_disconnect(request.receive, engine.generate(job))
        data = await _render(request, platform, params.response_format or "b64_json", result, key.uuid, spec)
    except BaseException as exc:
        meter.fail(exc)
        raise
    usage = result.usage
    assert usage is not None  # every image engine reports one
    meter.settle(200, usage)
    log.info(
        "images request %s model %s: %d image(s) %s, seeds %s",
        request_id,
        spec.id,
        len(result.images),
        job.size,
        [image.seed for image in result.images],
    )
    return json_response(
        {
            "created": int(time.time()),
            "background": result.background,
            "data": data,
            "output_format": result.output_format,
            "quality": result.quality,
            "size": job.size,
            "usage": render_usage(usage),
        },
        headers=_server_timing(result.timings),
    )


def _server_timing(timings: dict[str, float]) -> dict[str, str] | None:
    """What the backend's own work took (W3C Server-Timing): the rest is the endpoint's."""
    if not timings:
        return None
    return {"Server-Timing": ", ".join(f"{name};dur={sec * 1000:.1f}" for name, sec in timings.items())}


async def _render(
    request: Request,
    platform: Platform,
    response_format: str,
    result: ImageResult,
    key_uuid: str,
    spec: ModelSpec,
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if response_format == "url":
        base_url = str(request.base_url)
        for index, image in enumerate(result.images):
            ext = image.content_type.removeprefix("image/")
            ref = await platform.media.save(
                image.data,
                content_type=image.content_type,
                key_uuid=key_uuid,
                file_name=f"{request_id_of(request)}-{index}.{ext}",
                meta={"model": spec.id, "seed": image.seed, "request_id": request_id_of(request)},
            )
            items.append({"url": platform.media.signed_url(ref, base_url), "seed": image.seed})
        return items
    encoded = [image.data for image in result.images]
    if sum(len(d) for d in encoded) > INLINE_B64_BYTES:
        texts = await asyncio.to_thread(lambda: [base64.b64encode(d).decode() for d in encoded])
    else:
        texts = [base64.b64encode(d).decode() for d in encoded]
    return [{"b64_json": text, "seed": image.seed} for text, image in zip(texts, result.images, strict=True)]
