"""The `async-invoke` job kind: a fal-style model call (image, speech, ...) run by a worker.

What a model kind needs to be served through async-invoke is registered here per catalog kind
(`register_invoke_kind`): `parse` validates the job's `input` at submit time (a 400 naming
`input.<field>`) and again in the worker; `run` does the work, bills it and returns fal's output.
Built in: `tts` (SpeechEngine, output `audio {url, content_type, file_name, file_size}`) and
`image` (ImageEngine through engines/image_common.py, output `images [...]`).

Billing: `run` opens `platform.admit(Charge(spec, job.id, ...))`. The job id is the ledger's
request id, so a job that runs twice (its first worker died) is billed once.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from infergate.catalog import ModelSpec
from infergate.engines.audio_format import COMPRESSED, FORMATS
from infergate.engines.base import Engine, ImageEngine, RequestContext, SpeechEngine, SpeechRequest
from infergate.errors import InvalidRequest, NotFound, PermissionDenied, RateLimited, Unavailable
from infergate.jobs.queue import Job, RetryLater
from infergate.jobs.worker import register_handler
from infergate.metering import Charge
from infergate.schemas.async_invoke import SpeechInput, parse_input
from infergate.usage import unit_cost_nano

log = logging.getLogger("infergate.jobs")
KIND = "async-invoke"
ENDPOINT = "async-invoke"
UNAVAILABLE_RETRY_SECONDS = 5.0  # a model still loading: try again after this
RATE_LIMITED_RETRY_SECONDS = 10.0  # a key over its limits, when the refusal names no Retry-After


@dataclass(frozen=True)
class InvokeKind:
    engine_type: type[Engine]
    parse: Callable[[ModelSpec, dict[str, Any]], Any]
    run: Callable[[Job, ModelSpec, Any, Any, Any], Awaitable[Any]]  # (job, spec, engine, params, platform)


INVOKE_KINDS: dict[str, InvokeKind] = {}  # by the model's catalog kind (tts, image, ...)
INVOKE_BACKENDS: dict[str, InvokeKind] = {}  # by backend, before the kind (a fal upstream serves any kind)


def register_invoke_kind(
    model_kind: str,
    engine_type: type[Engine],
    parse: Callable[[ModelSpec, dict[str, Any]], Any],
    run: Callable[[Job, ModelSpec, Any, Any, Any], Awaitable[Any]],
) -> None:
    INVOKE_KINDS[model_kind] = InvokeKind(engine_type, parse, run)


def register_invoke_backend(
    backend: str,
    engine_type: type[Engine],
    parse: Callable[[ModelSpec, dict[str, Any]], Any],
    run: Callable[[Job, ModelSpec, Any, Any, Any], Awaitable[Any]],
) -> None:
    """Models of this catalog backend are run by these, whatever their kind."""
    INVOKE_BACKENDS[backend] = InvokeKind(engine_type, parse, run)


def resolve(platform: Any, model_id: str) -> tuple[ModelSpec, InvokeKind, Engine]:
    """The model's spec (aliases resolved), its kind's handlers and its engine: 404 for an
    unknown model, 400 for a kind async-invoke does not serve, 503 for a model that cannot serve."""
    spec = platform.catalog.get(model_id)
    if spec is None:
        raise NotFound(
            f"The model '{model_id}' does not exist; GET /v1/models lists the available ones.",
            param="model_id",
            code="model_not_found",
        )
    kind = INVOKE_BACKENDS.get(spec.backend) or INVOKE_KINDS.get(spec.kind)
    if kind is None:
        raise InvalidRequest(
            f"The model '{model_id}' is a {spec.kind} model; async-invoke serves "
            f"{', '.join(sorted(INVOKE_KINDS))} models.",
            param="model_id",
            code="model_not_supported",
        )
    engine = platform.engines.get(spec.id)
    if not isinstance(engine, kind.engine_type):
        reason = platform.engine_errors.get(spec.id, "no engine")
        raise Unavailable(f"The model '{model_id}' cannot serve: {reason}", code="model_unavailable")
    return spec, kind, engine


def check_submission(platform: Any, model_id: str, raw_input: dict[str, Any]) -> ModelSpec:
    """Submit-time checks: the model serves async-invoke and the input is valid for it."""
    spec, kind, _engine = resolve(platform, model_id)
    kind.parse(spec, raw_input)
    return spec


async def run_invoke(job: Job, platform: Any) -> Any:
    model_id = job.model_id or ""
    if job.key_uuid is not None:
        try:  # a deleted key's jobs are not run (nor billed to it) any more than its requests
            await asyncio.to_thread(platform.keys.get, job.key_uuid)
        except NotFound:
            raise PermissionDenied(
                "The model access key that created this job was deleted; the job was not run.",
                code="key_deleted",
            ) from None
    try:
        spec, kind, engine = resolve(platform, model_id)
        reason = engine.readiness()
        if reason is not None:
            raise Unavailable(f"The model '{model_id}' cannot serve yet: {reason}")
    except Unavailable as exc:
        raise RetryLater(exc.message, UNAVAILABLE_RETRY_SECONDS) from None
    params = kind.parse(spec, job.payload.get("input", {}))
    try:
        return await kind.run(job, spec, engine, params, platform)
    except RateLimited as exc:
        if exc.code == "insufficient_quota":  # the monthly budget: waiting hours helps nobody
            raise
        # a short rate/concurrency refusal: later, within the attempts
        delay = float(exc.headers.get("Retry-After", RATE_LIMITED_RETRY_SECONDS))
        raise RetryLater(exc.message, max(delay, 1.0)) from None


def _charge(job: Job, spec: ModelSpec) -> Charge:
    return Charge(spec, job.id, job.key_uuid, ENDPOINT, time.perf_counter())


# -- speech ----------------------------------------------------------------------------------------


def parse_speech(_spec: ModelSpec, raw: dict[str, Any]) -> SpeechInput:
    params = parse_input(SpeechInput, raw)
    if params.output_format in COMPRESSED and importlib.util.find_spec("soundfile") is None:
        raise InvalidRequest(
            f"output_format '{params.output_format}' needs the speech extra's soundfile package; "
            "wav and pcm work without it.",
            param="input.output_format",
        )
    return params


def finished_wav(audio: bytes) -> bytes:
    """A stored WAV gets its real sizes (the streaming header says 'unknown length')."""
    if audio[:4] != b"RIFF" or len(audio) < 44:
        return audio
    return (
        audio[:4]
        + struct.pack("<I", len(audio) - 8)
        + audio[8:40]
        + struct.pack("<I", len(audio) - 44)
        + audio[44:]
    )


async def run_speech(
    job: Job, spec: ModelSpec, engine: SpeechEngine, params: SpeechInput, platform: Any
) -> Any:
    # live usage: the engine sets the character count once synthesis starts
    meter = await platform.admit(_charge(job, spec), prompt_texts=lambda: [params.text], live_usage=True)
    try:
        request = SpeechRequest(
            text=params.text,
            voice=params.voice,
            speed=params.speed,
            response_format=params.output_format,
            context=RequestContext(request_id=job.id, key_uuid=job.key_uuid, usage=meter.usage),
        )
        audio = b"".join([chunk async for chunk in engine.speak(request)])
        if params.output_format == "wav":
            audio = finished_wav(audio)
        content_type = FORMATS[params.output_format]
        ref = await platform.media.save(
            audio,
            content_type=content_type,
            key_uuid=job.key_uuid,
            file_name=f"{job.id}.{params.output_format}",
            meta={"model": spec.id, "request_id": job.id},
        )
        output = {
            "audio": {
                "url": platform.media.signed_url(ref),
                "content_type": content_type,
                "file_name": ref.file_name,
                "file_size": ref.size,
            }
        }
    except BaseException as exc:
        meter.fail(exc)
        raise
    meter.settle(200, meter.usage)
    return output


# -- images ----------------------------------------------------------------------------------------


def parse_image(spec: ModelSpec, raw: dict[str, Any]) -> Any:
    from infergate.schemas.images import parse_fal_image_input

    return parse_fal_image_input(raw, spec)  # sizes checked against the model's allowed set


async def run_image(job: Job, spec: ModelSpec, engine: ImageEngine, params: Any, platform: Any) -> Any:
    from infergate.engines.image_common import image_tokens, run_fal_image_job

    width, height = params.dimensions(spec)
    meter = await platform.admit(
        _charge(job, spec),
        max_output_tokens=params.num_images * image_tokens(width, height, "auto"),
        extra_cost_nano=unit_cost_nano(spec.image_price, params.num_images),
        prompt_texts=lambda: [params.prompt],
        live_usage=True,
    )
    try:
        context = RequestContext(request_id=job.id, key_uuid=job.key_uuid, usage=meter.usage)
        output, usage = await run_fal_image_job(engine, params, context, platform.media)
    except BaseException as exc:
        meter.fail(exc)
        raise
    meter.settle(200, usage)
    return output


register_invoke_kind("tts", SpeechEngine, parse_speech, run_speech)
register_invoke_kind("image", ImageEngine, parse_image, run_image)
register_handler(KIND, run_invoke)
