"""fal-style image inputs (what async-invoke jobs take) and the job runner, on the real diffusers
engine with the tiny pipeline and the real local media store, in this process: the parser's
answers, fal's output shape, stored files with their owner, URLs signed and re-signed."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from infergate.catalog import ModelSpec
from infergate.engines.base import RequestContext
from infergate.engines.diffusers_image import DiffusersImageEngine
from infergate.engines.image_common import run_fal_image_job
from infergate.errors import InvalidRequest
from infergate.schemas.images import parse_fal_image_input
from infergate.storage.media import MediaSettings, MediaStore
from tests.support.tiny_diffusers import tiny_pipeline_dir

SPEC = ModelSpec(
    id="fal-ai/fast-sdxl", kind="image", backend="diffusers", path="x", steps=2, default_size="64x64"
)


def test_the_documents_example_input_parses() -> None:
    params = parse_fal_image_input(
        {
            "prompt": "A futuristic cityscape at sunset, with flying cars and towering skyscrapers.",
            "output_format": "landscape_4_3",  # the document puts the size preset here
            "num_inference_steps": 4,
            "guidance_scale": 3.5,
            "num_images": 1,
            "enable_safety_checker": True,
        }
    )
    assert params.dimensions(SPEC) == (1024, 768)
    assert (params.output_format, params.num_inference_steps, params.guidance_scale) == ("jpeg", 4, 3.5)
    assert parse_fal_image_input({"prompt": "x"}).dimensions(SPEC) == (64, 64)  # the model's default
    assert parse_fal_image_input({"prompt": "x", "image_size": "portrait_16_9"}).dimensions(SPEC) == (
        576,
        1024,
    )
    sized = parse_fal_image_input({"prompt": "x", "image_size": {"width": 640, "height": 480}})
    assert sized.dimensions(SPEC) == (640, 480)


@pytest.mark.parametrize(
    ("raw", "param", "fragment"),
    [
        ({"prompt": "x", "image_size": "huge"}, "input.image_size", "square_hd"),
        (
            {"prompt": "x", "image_size": {"width": 100, "height": 64}},
            "input.image_size.width",
            "multiple of 8",
        ),
        ({"prompt": "x", "image_size": {"width": 8192, "height": 64}}, "input.image_size.width", "4096"),
        ({"prompt": "x", "num_images": 0}, "input.num_images", "greater than or equal to 1"),
        ({"prompt": "x", "num_inference_steps": 1000}, "input.num_inference_steps", "200"),
        ({"prompt": "x", "guidance_scale": "high"}, "input.guidance_scale", "valid number"),
        ({"prompt": "x", "output_format": "gif"}, "input.output_format", "jpeg"),
        ({"prompt": "x", "seed": -5}, "input.seed", "greater than or equal to 0"),
        ({"prompt": "x", "stepz": 3}, "input.stepz", "Extra inputs"),
        ({"text": "hello"}, "input.prompt", "Field required"),
        ({"prompt": ""}, "input.prompt", "at least 1"),
    ],
)
def test_bad_inputs_are_400s_naming_the_field(raw: dict[str, Any], param: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_fal_image_input(raw)
    assert caught.value.param == param and fragment in caught.value.message, caught.value.message
    with pytest.raises(InvalidRequest) as caught:
        parse_fal_image_input(["not", "an", "object"])
    assert caught.value.param == "input"


def test_sizes_are_checked_against_the_models_allowed_sizes() -> None:
    """As /v1/images/generations: the document's squares, the catalog's sizes and default_size."""
    spec = SPEC.model_copy(update={"sizes": ["640x480"]})
    for raw in (
        {"prompt": "x", "image_size": {"width": 4096, "height": 4096}, "num_images": 10},
        {"prompt": "x", "image_size": "portrait_16_9"},  # a preset outside the set: 576x1024
        {"prompt": "x", "output_format": "landscape_4_3"},  # the document's spelling of a preset
    ):
        with pytest.raises(InvalidRequest) as caught:
            parse_fal_image_input(raw, spec)
        assert caught.value.param == "input.image_size", caught.value.message
        assert "256x256, 512x512, 1024x1024, 640x480, 64x64" in caught.value.message, caught.value.message
    for raw, size in (
        ({"prompt": "x"}, (64, 64)),  # the model's default
        ({"prompt": "x", "image_size": "square"}, (512, 512)),
        ({"prompt": "x", "image_size": {"width": 640, "height": 480}}, (640, 480)),
    ):
        assert parse_fal_image_input(raw, spec).dimensions(spec) == size
    # a fal upstream judges its own sizes
    upstream = SPEC.model_copy(update={"backend": "fal"})
    huge = {"prompt": "x", "image_size": {"width": 4096, "height": 4096}}
    assert parse_fal_image_input(huge, upstream).dimensions(upstream) == (4096, 4096)


@pytest.fixture(scope="module")
def engine() -> Iterator[DiffusersImageEngine]:
    spec = SPEC.model_copy(update={"path": str(tiny_pipeline_dir()), "guidance_scale": 1.0, "threads": 1})
    loop = asyncio.new_event_loop()
    eng = DiffusersImageEngine(spec)
    loop.run_until_complete(eng.start())
    eng._test_loop = loop  # type: ignore[attr-defined]
    yield eng
    loop.run_until_complete(eng.close())
    loop.close()


def run(engine: DiffusersImageEngine, coro: Any) -> Any:
    return engine._test_loop.run_until_complete(coro)  # type: ignore[attr-defined]


def store(tmp_path: Path, retention: float = 3600) -> MediaStore:
    settings = MediaSettings(
        retention=retention,
        url_ttl=600,
        secret=None,
        public_url=None,
        s3_bucket=None,
        s3_endpoint=None,
        s3_region=None,
        s3_prefix="",
    )
    return MediaStore(settings, tmp_path)


def test_a_job_stores_its_images_and_answers_in_fals_shape(
    engine: DiffusersImageEngine, tmp_path: Path
) -> None:
    media = store(tmp_path)
    params = parse_fal_image_input(
        {
            "prompt": "an otter",
            "image_size": {"width": 64, "height": 64},
            "num_images": 2,
            "seed": 7,
            "output_format": "png",
        }
    )
    context = RequestContext(request_id="job_123", key_uuid="key-a")
    output, usage = run(engine, run_fal_image_job(engine, params, context, media))
    assert [(i["width"], i["height"], i["content_type"]) for i in output["images"]] == [
        (64, 64, "image/png")
    ] * 2
    assert (output["seed"], output["seeds"], output["prompt"]) == (7, [7, 8], "an otter")
    assert output["has_nsfw_concepts"] == [False, False] and output["timings"]["inference"] > 0
    assert usage.images == 2 and usage.output_tokens == 2 * 5 and usage.input_tokens > 0
    first = output["images"][0]
    assert first["url"].startswith("/media/") and first["file_name"] == "job_123-0.png"  # no base: relative
    media_id = urlsplit(first["url"]).path.split("/")[2]
    ref, data = run(engine, media.load(media_id))
    assert (ref.key_uuid, ref.meta["seed"], len(data), data[:4]) == (
        "key-a",
        7,
        first["file_size"],
        b"\x89PNG",
    )
    # a reader gets the URLs signed afresh against its own base URL, and they verify
    fresh = media.refresh_urls(output, "http://127.0.0.1:8000/")
    url = fresh["images"][1]["url"]
    assert url.startswith("http://127.0.0.1:8000/media/") and fresh["images"][1]["width"] == 64
    parts = urlsplit(url)
    _, _, media_id, name = parts.path.split("/")
    query = parse_qs(parts.query)
    media.verify(media_id, name, query["expires"][0], query["sig"][0])
    # a URL that is not one of ours is left as it is
    assert media.refresh_urls({"url": "https://example.test/a.png"}) == {"url": "https://example.test/a.png"}


def test_same_seed_same_images_and_sync_mode_gives_data_uris(
    engine: DiffusersImageEngine, tmp_path: Path
) -> None:
    media = store(tmp_path)
    raw = {"prompt": "a fox", "image_size": {"width": 64, "height": 64}, "seed": 99, "sync_mode": True}
    context = RequestContext(request_id="job_1", key_uuid="k")
    a, _ = run(engine, run_fal_image_job(engine, parse_fal_image_input(raw), context, media))
    b, _ = run(engine, run_fal_image_job(engine, parse_fal_image_input(raw), context, media))
    assert a["images"][0]["url"].startswith("data:image/jpeg;base64,")
    assert a["images"][0]["url"] == b["images"][0]["url"]
    assert base64.b64decode(a["images"][0]["url"].split(",", 1)[1])[:2] == b"\xff\xd8"
    assert not (tmp_path / "media").exists()  # nothing stored


def test_a_cancelled_job_stops_the_pipeline(engine: DiffusersImageEngine, tmp_path: Path) -> None:
    params = parse_fal_image_input({"prompt": "slow", "image_size": "square", "num_inference_steps": 200})
    context = RequestContext(request_id="job_c", key_uuid="k")

    async def cancel_soon() -> float:
        task = asyncio.ensure_future(run_fal_image_job(engine, params, context, store(tmp_path)))
        deadline = time.monotonic() + 10
        await asyncio.sleep(0)  # the task submits its call to the engine's thread...
        while engine._thread.queue.qsize() and time.monotonic() < deadline:  # ...which takes it
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()  # the next job waits only for the cancelled one's current step
        quick = parse_fal_image_input({"prompt": "quick", "image_size": {"width": 64, "height": 64}})
        await run_fal_image_job(engine, quick, context, store(tmp_path))
        return time.monotonic() - started

    assert run(engine, cancel_soon()) < 10
