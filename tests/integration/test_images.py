"""POST /v1/images/generations on a real server with a real (tiny, random-weight) diffusers
pipeline, through the unchanged `openai` and `gradient` SDKs and httpx; billing read back from
the server's ledger."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gradient import Gradient
from PIL import Image

from tests.support.ledger import ledger_row, rows_where
from tests.support.server import ServerProcess
from tests.support.tiny_diffusers import tiny_pipeline_dir

TINY_TOKENS_64 = math.ceil(1056 * 64 * 64 / 1024**2)  # medium quality image tokens of a 64x64 image


def catalog(pipeline: Path) -> str:
    return f"""
builtins = false

[[models]]
id = "tiny-sd"
kind = "image"
backend = "diffusers"
path = "{pipeline}"
steps = 2
guidance_scale = 1.0
threads = 1
sizes = ["64x64", "128x64"]
default_size = "64x64"
input_price = 1.0
output_price = 10.0
image_price = 0.01

[[models]]
id = "a-chat-model"
backend = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
id = "broken-sd"
kind = "image"
backend = "diffusers"
path = "{pipeline.parent / "missing"}"
"""


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("images"), catalog(tiny_pipeline_dir())).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def secret(image_server: ServerProcess) -> str:
    return image_server.create_key("images")["secret_key"]


@pytest.fixture(scope="module")
def client(image_server: ServerProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{image_server.url}/v1/", api_key=secret, max_retries=0, timeout=120)


def post(server: ServerProcess, secret: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=120,
        **kwargs,
    )


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_openai_sdk_generates_distinct_images_billed_per_token_and_image(
    image_server: ServerProcess, client: openai.OpenAI
) -> None:
    raw = client.images.with_raw_response.generate(
        model="tiny-sd", prompt="a cute baby sea otter", n=2, size="64x64"
    )
    result = raw.parse()
    assert len(result.data) == 2
    images = [decode(d.b64_json) for d in result.data]
    assert all((im.format, im.size) == ("PNG", (64, 64)) for im in images)
    assert images[0].tobytes() != images[1].tobytes()  # each image has its own seed
    body = raw.http_response.json()
    assert (body["background"], body["output_format"], body["quality"], body["size"]) == (
        "opaque",
        "png",
        "medium",
        "64x64",
    )
    assert abs(body["created"] - time.time()) < 120
    assert "inference;dur=" in raw.http_response.headers["server-timing"]  # the pipeline's share
    seeds = [d["seed"] for d in body["data"]]
    assert seeds[1] == seeds[0] + 1
    usage = body["usage"]
    assert usage["output_tokens"] == 2 * TINY_TOKENS_64
    assert usage["input_tokens"] > 0 and usage["input_tokens_details"]["text_tokens"] == usage["input_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    row = ledger_row(image_server, raw.http_response.headers["x-request-id"])
    assert (row["endpoint"], row["status"], row["model"]) == ("images.generations", 200, "tiny-sd")
    assert (row["input_tokens"], row["output_tokens"]) == (usage["input_tokens"], usage["output_tokens"])
    # $1/1M input tokens, $10/1M output tokens, $0.01 per image, in nano-USD
    expected = usage["input_tokens"] * 1_000 + usage["output_tokens"] * 10_000 + 2 * 10_000_000
    assert row["cost_nano_usd"] == expected
    assert f"seeds [{seeds[0]}, {seeds[1]}]" in image_server.log()  # recorded in the server's log


def test_a_seed_makes_the_same_image_again(image_server: ServerProcess, secret: str) -> None:
    body = {"model": "tiny-sd", "prompt": "a lighthouse", "size": "64x64", "seed": 1234}
    first, second = post(image_server, secret, body), post(image_server, secret, body)
    assert first.status_code == second.status_code == 200
    assert first.json()["data"][0]["b64_json"] == second.json()["data"][0]["b64_json"]
    assert first.json()["data"][0]["seed"] == 1234
    other = post(image_server, secret, {**body, "seed": 1235}).json()["data"][0]["b64_json"]
    assert other != first.json()["data"][0]["b64_json"]


def test_gradient_sdk_generates_an_image(image_server: ServerProcess, secret: str) -> None:
    gradient = Gradient(model_access_key=secret, base_url=image_server.url, max_retries=0)
    result = gradient.images.generate(
        model="tiny-sd", prompt="a futuristic city at sunset", n=1, size="64x64"
    )
    assert decode(result.data[0].b64_json).size == (64, 64)


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_output_formats_and_declared_sizes(
    image_server: ServerProcess, secret: str, fmt: str, pil_format: str
) -> None:
    r = post(
        image_server, secret, {"model": "tiny-sd", "prompt": "a fox", "size": "128x64", "output_format": fmt}
    )
    assert r.status_code == 200, r.text
    assert r.json()["output_format"] == fmt
    image = decode(r.json()["data"][0]["b64_json"])
    assert (image.format, image.size) == (pil_format, (128, 64))


def test_default_and_document_sizes(image_server: ServerProcess, secret: str) -> None:
    r = post(image_server, secret, {"model": "tiny-sd", "prompt": "a fox"})  # no size: the model's default
    assert r.status_code == 200 and r.json()["size"] == "64x64"
    r = post(
        image_server, secret, {"model": "tiny-sd", "prompt": "a fox", "size": "256x256", "quality": "low"}
    )
    assert r.status_code == 200, r.text
    assert decode(r.json()["data"][0]["b64_json"]).size == (256, 256)
    assert r.json()["quality"] == "low"
    assert r.json()["usage"]["output_tokens"] == math.ceil(272 * 256 * 256 / 1024**2)


def test_url_response_is_a_signed_url_of_the_media_store(image_server: ServerProcess, secret: str) -> None:
    r = post(
        image_server, secret, {"model": "tiny-sd", "prompt": "an otter", "n": 2, "response_format": "url"}
    )
    assert r.status_code == 200, r.text
    urls = [d["url"] for d in r.json()["data"]]
    assert all(u.startswith(f"{image_server.url}/media/") and "sig=" in u and "expires=" in u for u in urls)
    fetched = httpx.get(urls[0])  # no key needed: the signed URL is the capability
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    assert httpx.get(urls[0].replace("sig=", "sig=x")).status_code == 403
    # the file is recorded as the requesting key's, with its seed
    records = [json.loads(p.read_text()) for p in (image_server.data_dir / "media").glob("*/*.json")]
    mine = [m for m in records if m["meta"]["request_id"] == r.headers["x-request-id"]]
    assert sorted(m["meta"]["seed"] for m in mine) == sorted(d["seed"] for d in r.json()["data"])
    key_uuid = ledger_row(image_server, r.headers["x-request-id"])["key_uuid"]
    assert {m["key_uuid"] for m in mine} == {key_uuid}


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"size": "300x300"}, "size", "allowed sizes: 256x256, 512x512, 1024x1024, 64x64, 128x64"),
        ({"size": "big"}, "size", "allowed sizes"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"n": 11}, "n", "less than or equal to 10"),
        ({"n": "2"}, "n", "valid integer"),
        ({"output_format": "gif"}, "output_format", "png"),
        ({"response_format": "binary"}, "response_format", "b64_json"),
        ({"background": "transparent"}, "background", "opaque"),
        ({"background": "transparent", "output_format": "jpeg"}, "background", "jpeg"),
        ({"stream": True}, "stream", "not supported"),
        ({"prompt": "x" * 32_001}, "prompt", "at most 32000"),
        ({"prompt": ""}, "prompt", "at least 1"),
        ({"model": "a-chat-model"}, "model", "not an image model"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(
    image_server: ServerProcess, secret: str, body: dict, param: str, fragment: str
) -> None:
    r = post(image_server, secret, {"model": "tiny-sd", "prompt": "an otter", "size": "64x64", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_refusals_unknown_model_unauthenticated_oversized_unservable(
    image_server: ServerProcess, secret: str
) -> None:
    r = post(image_server, secret, {"model": "nope", "prompt": "an otter"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(f"{image_server.url}/v1/images/generations", json={"model": "tiny-sd", "prompt": "x"})
    assert r.status_code == 401
    r = post(image_server, secret, {"model": "tiny-sd", "prompt": "x" * (9 * 1024 * 1024)})
    assert r.status_code == 413
    r = post(image_server, secret, {"model": "broken-sd", "prompt": "an otter"})
    assert r.status_code == 503 and "model_index.json" in r.json()["error"]["message"]
    listed = httpx.get(f"{image_server.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}).json()
    assert {m["id"] for m in listed["data"]} == {"tiny-sd", "a-chat-model"}
    # none of these did billable work: only the admitted requests have ledger rows
    assert rows_where(image_server, "status IN (401, 404, 413, 503)", timeout=0.2) == []


def test_concurrent_requests_are_served_in_turn(image_server: ServerProcess, secret: str) -> None:
    results: list[int] = []

    def one(i: int) -> None:
        r = post(image_server, secret, {"model": "tiny-sd", "prompt": f"otter {i}", "size": "64x64"})
        results.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4


def test_a_client_that_leaves_stops_the_generation_and_pays_nothing(
    image_server: ServerProcess, secret: str
) -> None:
    slow = {"model": "tiny-sd", "prompt": "a slow otter", "size": "256x256", "num_inference_steps": 200}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{image_server.url}/v1/images/generations",
            json=slow,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=1.0,
        )
    rows = rows_where(image_server, "status = 499 AND endpoint = 'images.generations'", timeout=20)
    assert len(rows) == 1 and rows[0]["cost_nano_usd"] == 0
    # the pipeline stopped at its next step: the next request does not wait for 200 steps
    started = time.monotonic()
    assert (
        post(image_server, secret, {"model": "tiny-sd", "prompt": "next", "size": "64x64"}).status_code == 200
    )
    assert time.monotonic() - started < 30


def test_without_the_images_extra_the_model_is_unavailable_with_the_hint(tmp_path: Path) -> None:
    # An environment without diffusers: a stand-in package that fails to import as a missing one does.
    shadow = tmp_path / "no-images-extra" / "diffusers"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'diffusers'\", name='diffusers')\n"
    )
    env = {"PYTHONPATH": str(shadow.parent)}
    proc = ServerProcess(tmp_path / "server", catalog(tiny_pipeline_dir()), env=env).start()
    try:
        secret = proc.create_key("no-extra")["secret_key"]
        r = post(proc, secret, {"model": "tiny-sd", "prompt": "an otter", "size": "64x64"})
        assert r.status_code == 503, r.text
        message = r.json()["error"]["message"]
        assert "diffusers is not installed" in message and "make serve EXTRAS=images" in message
        listed = httpx.get(f"{proc.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}).json()
        assert "tiny-sd" not in {m["id"] for m in listed["data"]}
        assert "make serve EXTRAS=images" in proc.log()  # said once at start, for the operator
    finally:
        proc.stop()
