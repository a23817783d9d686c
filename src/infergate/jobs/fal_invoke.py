"""async-invoke on a fal-compatible queue upstream (catalog `backend = "fal"`), for any model kind.

The job's input goes to the upstream as-is (fal validates it; its 422 becomes a FAILED job with
the upstream's words), after the submit-time checks below. The upstream request is recorded on
the job (`checkpoint`) before waiting, so a job whose worker died polls the same upstream request
when it runs again instead of paying for a second one; cancelling the job cancels it upstream.

Billing, per the catalog entry's prices: speech per input character (`input_price`, USD per 1M
characters), images per image (`image_price`), audio per second generated (`audio_second_price`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from infergate.catalog import ModelSpec
from infergate.engines.fal_upstream import FalQueueEngine, FalRequest
from infergate.errors import InvalidRequest
from infergate.jobs.invoke import register_invoke_backend
from infergate.jobs.queue import Job
from infergate.metering import Charge
from infergate.usage import Usage, unit_cost_nano

ENDPOINT = "async-invoke"
MAX_TEXT_CHARS = 100_000
MAX_AUDIO_SECONDS = 600.0
REQUIRED_TEXT = {"tts": "text", "audio": "prompt", "image": "prompt"}


def parse_fal(spec: ModelSpec, raw: dict[str, Any]) -> dict[str, Any]:
    """Submit-time checks of what this server can check; the rest is the upstream's to judge."""
    field = REQUIRED_TEXT.get(spec.kind, "prompt")
    text = raw.get(field)
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"input.{field} is required: a non-empty string.", param=f"input.{field}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidRequest(
            f"input.{field} is longer than {MAX_TEXT_CHARS} characters.", param=f"input.{field}"
        )
    if spec.kind == "audio":  # required: audio is billed per second asked for
        seconds = raw.get("seconds_total")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 < seconds <= MAX_AUDIO_SECONDS
        ):
            raise InvalidRequest(
                f"input.seconds_total must be a number of seconds in (0, {MAX_AUDIO_SECONDS:g}].",
                param="input.seconds_total",
            )
    if spec.kind == "image" and "num_images" in raw:
        count = raw["num_images"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10:
            raise InvalidRequest(
                "input.num_images must be an integer from 1 to 10.", param="input.num_images"
            )
    return raw


def most_units_cost(spec: ModelSpec, params: dict[str, Any]) -> int:
    """The per-unit part of the largest cost, reserved against a budget before submitting."""
    if spec.kind == "image":
        return unit_cost_nano(spec.image_price, int(params.get("num_images", 1)))
    if spec.kind == "audio":
        return unit_cost_nano(spec.audio_second_price, float(params["seconds_total"]))
    return 0  # speech: its characters are the prompt, reserved at the input price


def usage_of(spec: ModelSpec, params: dict[str, Any], output: dict[str, Any]) -> Usage:
    if spec.kind == "tts":
        return Usage(input_tokens=len(str(params.get("text", ""))))
    if spec.kind == "image":
        images = output.get("images")
        return Usage(images=len(images) if isinstance(images, list) else 0)
    seconds = params.get("seconds_total")  # what was asked for is what fal bills
    return Usage(audio_seconds=float(seconds) if isinstance(seconds, int | float) else 0.0)


async def run_fal(
    job: Job, spec: ModelSpec, engine: FalQueueEngine, params: dict[str, Any], platform: Any
) -> Any:
    meter = await platform.admit(
        Charge(spec, job.id, job.key_uuid, ENDPOINT, time.perf_counter()),
        max_output_tokens=0,  # fal bills units, not tokens
        extra_cost_nano=most_units_cost(spec, params),
        prompt_texts=lambda: [str(params.get(REQUIRED_TEXT.get(spec.kind, "prompt"), ""))],
        live_usage=True,
    )
    request: FalRequest | None = None
    try:
        saved = job.payload.get("checkpoint", {}).get("fal_request")
        if saved:
            request = FalRequest.from_dict(saved)
        else:
            request = await engine.submit(params)
            await platform.jobs.checkpoint(job, {"fal_request": request.to_dict()})
        output = await engine.wait(request)
    except asyncio.CancelledError as exc:
        if request is not None:  # cancelled by its owner (not a server stopping): stop the upstream too
            await asyncio.shield(_cancel_upstream_if_cancelled(platform, job, engine, request))
        meter.fail(exc)
        raise
    except BaseException as exc:
        meter.fail(exc)
        raise
    meter.settle(200, usage_of(spec, params, output))
    return output


async def _cancel_upstream_if_cancelled(
    platform: Any, job: Job, engine: FalQueueEngine, request: FalRequest
) -> None:
    current = await platform.jobs.get(job.id, admin=True)
    if current is not None and current.status == "CANCELLED":
        await engine.cancel(request)


register_invoke_backend("fal", FalQueueEngine, parse_fal, run_fal)
