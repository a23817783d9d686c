"""Image jobs through POST /v1/async-invoke on a real server: a fal model id served by the local
diffusers engine (catalog alias), fal-style inputs checked at submit, fal's output with media URLs
that the server serves, billing in the ledger, and a cancelled image job."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.ledger import ledger_row
from tests.support.server import ServerProcess
from tests.support.tiny_diffusers import tiny_pipeline_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    catalog = f"""
builtins = false

[[models]]
id = "tiny-sd"
aliases = ["fal-ai/fast-sdxl"]
kind = "image"
backend = "diffusers"
path = "{tiny_pipeline_dir()}"
steps = 2
guidance_scale = 1.0
threads = 1
default_size = "64x64"
sizes = ["64x64", "1024x768"]
output_price = 10.0
image_price = 0.01
"""
    proc = ServerProcess(tmp_path_factory.mktemp("images-async"), catalog).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def headers(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.create_key('jobs')['secret_key']}"}


def wait_status(
    server: ServerProcess, headers: dict[str, str], job_id: str, done: set[str]
) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        status = httpx.get(f"{server.url}/v1/async-invoke/{job_id}/status", headers=headers).json()
        if status["status"] in done or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_an_image_job_completes_with_fal_output_served_as_signed_urls(
    server: ServerProcess, headers: dict[str, str]
) -> None:
    body = {
        "model_id": "fal-ai/fast-sdxl",
        "input": {
            "prompt": "A futuristic cityscape at sunset",
            "image_size": {"width": 64, "height": 64},
            "num_images": 2,
            "seed": 5,
            "output_format": "png",
            "enable_safety_checker": True,
        },
        "tags": [{"key": "type", "value": "test"}],
    }
    created = httpx.post(f"{server.url}/v1/async-invoke", json=body, headers=headers)
    assert created.status_code == 202, created.text
    job_id = created.json()["request_id"]
    assert created.json()["status"] == "QUEUED"
    assert wait_status(server, headers, job_id, {"COMPLETED", "FAILED"})["status"] == "COMPLETED"
    job = httpx.get(f"{server.url}/v1/async-invoke/{job_id}", headers=headers).json()
    images = job["output"]["images"]
    assert job["output"]["seed"] == 5 and job["output"]["prompt"] == body["input"]["prompt"]
    assert [(i["width"], i["height"], i["content_type"]) for i in images] == [(64, 64, "image/png")] * 2
    pictures = []
    for item in images:
        assert item["url"].startswith(f"{server.url}/media/")
        fetched = httpx.get(item["url"])
        assert fetched.status_code == 200 and len(fetched.content) == item["file_size"]
        pictures.append(Image.open(io.BytesIO(fetched.content)))
    assert pictures[0].size == (64, 64) and pictures[0].tobytes() != pictures[1].tobytes()
    row = ledger_row(server, job_id)
    assert (row["status"], row["model"], row["output_tokens"]) == (200, "tiny-sd", 2 * 5)
    assert row["cost_nano_usd"] == 2 * 5 * 10_000 + 2 * 10_000_000  # input_price 0: prompt tokens are free


@pytest.mark.parametrize(
    ("model_input", "param"),
    [
        ({"prompt": "x", "image_size": "huge"}, "input.image_size"),
        # outside the model's allowed sizes (as for /v1/images/generations): refused, not run
        (
            {"prompt": "x", "image_size": {"width": 4096, "height": 4096}, "num_images": 10},
            "input.image_size",
        ),
        ({"prompt": "x", "image_size": "portrait_16_9"}, "input.image_size"),
        ({"prompt": "x", "num_images": 11}, "input.num_images"),
        ({"prompt": "x", "guidance_scale": "a lot"}, "input.guidance_scale"),
        ({"prompt": "x", "colour": "blue"}, "input.colour"),
        ({"text": "a tts input for an image model"}, "input.prompt"),
    ],
)
def test_bad_image_inputs_are_refused_at_submit(
    server: ServerProcess, headers: dict[str, str], model_input: dict[str, Any], param: str
) -> None:
    r = httpx.post(
        f"{server.url}/v1/async-invoke",
        json={"model_id": "fal-ai/fast-sdxl", "input": model_input},
        headers=headers,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_the_documents_example_is_accepted_and_a_running_image_job_can_be_cancelled(
    server: ServerProcess, headers: dict[str, str]
) -> None:
    body = {
        "model_id": "fal-ai/fast-sdxl",
        "input": {
            "prompt": "A futuristic cityscape at sunset, with flying cars and towering skyscrapers.",
            "output_format": "landscape_4_3",  # the document's size preset, read as image_size
            "num_inference_steps": 4,
            "guidance_scale": 3.5,
            "num_images": 1,
            "enable_safety_checker": True,
        },
        "tags": [{"key": "type", "value": "test"}],
    }
    created = httpx.post(f"{server.url}/v1/async-invoke", json=body, headers=headers)
    assert created.status_code == 202, created.text
    job_id = created.json()["request_id"]
    cancelled = httpx.post(f"{server.url}/v1/async-invoke/{job_id}/cancel", headers=headers)
    assert cancelled.status_code == 200, cancelled.text
    assert wait_status(server, headers, job_id, {"CANCELLED", "COMPLETED", "FAILED"})["status"] == "CANCELLED"


def test_the_fal_alias_also_serves_the_openai_images_endpoint(
    server: ServerProcess, headers: dict[str, str]
) -> None:
    body = {"model": "fal-ai/fast-sdxl", "prompt": "an otter", "size": "auto"}
    r = httpx.post(f"{server.url}/v1/images/generations", json=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == "64x64"
    assert ledger_row(server, r.headers["x-request-id"])["model"] == "tiny-sd"
