"""POST /v1/audio/speech: text to speech (OpenAI's synchronous shape), streamed as it is made.

Billed per input character through the metering path: the character count is the request's
`input_tokens`, priced with the model's `input_price` (USD per 1M characters).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import authenticate, json_body, platform_of, request_id_of, validate
from infergate.api.streaming import SSEResponse, run_until_disconnect
from infergate.catalog import ModelSpec
from infergate.engines.audio_format import FORMATS
from infergate.engines.base import RequestContext, SpeechEngine, SpeechRequest
from infergate.errors import InvalidRequest, Unavailable
from infergate.metering import CLIENT_GONE_STATUS, Charge, Meter
from infergate.platform import Platform
from infergate.schemas.audio import SpeechCreateRequest
from infergate.schemas.common import INFERENCE_ERRORS

router = APIRouter()
log = logging.getLogger("infergate.audio")
ENDPOINT = "audio.speech"

OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": SpeechCreateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            }
        },
    },
    "responses": {
        "200": {
            "description": "The audio, streamed as it is synthesized",
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}} for media in FORMATS.values()
            },
        }
    },
}


class AudioStreamResponse(SSEResponse):
    """Chunked audio; like SSEResponse, a client that leaves cancels the synthesis."""

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str) -> None:
        self.media_type = media_type
        super().__init__(chunks)


def speech_engine(platform: Platform, model_id: str) -> tuple[ModelSpec, SpeechEngine]:
    spec, engine = platform.engine_for(model_id, "tts", SpeechEngine)
    reason = engine.readiness()  # a voice still loading in the background
    if reason is not None:
        raise Unavailable(f"The model '{model_id}' cannot serve: {reason}", code="model_unavailable")
    return spec, engine


@router.post(
    "/audio/speech",
    responses=INFERENCE_ERRORS,
    openapi_extra=OPENAPI,
    summary="Create speech from text (OpenAI compatible; the audio streams as it is synthesized)",
)
async def create_speech(request: Request) -> Response:
    started = time.perf_counter()
    key = await authenticate(request)
    params = validate(SpeechCreateRequest, await json_body(request))
    spec, engine = speech_engine(platform_of(request), params.model)
    request.scope["state"]["model"] = spec.id
    fmt = params.response_format.lower()
    if fmt not in FORMATS:
        raise InvalidRequest(
            f"response_format '{params.response_format}' is not supported; this server encodes "
            f"{', '.join(FORMATS)}.",
            param="response_format",
            code="unsupported_response_format",
        )
    request_id = request_id_of(request)
    # live usage: the engine sets the character count once synthesis starts, nothing is estimated
    meter = await platform_of(request).admit(
        Charge(spec, request_id, key.uuid, ENDPOINT, started),
        prompt_texts=lambda: [params.input],  # the budget reserves the characters' price
        live_usage=True,
    )
    speech = SpeechRequest(
        text=params.input,
        voice=params.voice,
        speed=params.speed,
        response_format=fmt,
        context=RequestContext(request_id=request_id, key_uuid=key.uuid, usage=meter.usage),
    )
    chunks = engine.speak(speech)
    try:  # the first chunk before answering 200, so an unknown voice gets its 400
        first = await run_until_disconnect(request.receive, anext(chunks))
    except BaseException as exc:
        meter.fail(exc)
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    return AudioStreamResponse(_body(chunks, first, meter), FORMATS[fmt])


async def _body(chunks: AsyncIterator[bytes], first: bytes, meter: Meter) -> AsyncIterator[bytes]:
    """Whatever ends the audio (its end, a failure, the client leaving), the meter settles once.
    A failure mid-stream cannot be reported in audio: the connection is broken off instead, so
    the client sees a truncated transfer rather than a short, seemingly whole file."""
    try:
        yield first
        async for chunk in chunks:
            yield chunk
        meter.settle(200, meter.usage)
    except BaseException as exc:
        meter.fail(exc)
        if isinstance(exc, Exception):
            log.error("speech failed mid-stream (request %s): %s", meter.charge.request_id, exc)
        raise
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        meter.settle(CLIENT_GONE_STATUS)  # only if nothing above settled
