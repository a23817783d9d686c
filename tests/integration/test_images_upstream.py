"""Image models served by an OpenAI-compatible images upstream (backend "openai", kind "image"),
stood in for by a small local aiohttp server on a real socket; the openai SDK talks to infergate."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import openai
import pytest
from PIL import Image

from tests.support.images_upstream import ImagesUpstream
from tests.support.ledger import ledger_row
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def stand_in() -> Iterator[ImagesUpstream]:
    upstream = ImagesUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def server(stand_in: ImagesUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    text = "builtins = false\n"
    for model_id, upstream in [
        ("openai-gpt-image-1", "img"),
        ("linked", "img-url"),
        ("busy", "img-fail-429"),
        ("picky", "img-fail-400"),
        ("garbled", "img-badjson"),
    ]:
        text += (
            f'\n[[models]]\nid = "{model_id}"\nkind = "image"\nbackend = "openai"\n'
            f'base_url = "{stand_in.base_url}"\nupstream_model = "{upstream}"\n'
            'api_key_env = "IMG_UPSTREAM_KEY"\n'
            'sizes = ["1536x1024"]\ninput_price = 5.0\noutput_price = 40.0\n'
        )
    proc = ServerProcess(
        tmp_path_factory.mktemp("images-upstream"), text, env={"IMG_UPSTREAM_KEY": "sk-upstream-secret"}
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return server.openai_client("images-upstream")


def test_forwarded_with_the_upstream_name_and_key_billed_by_its_usage(
    server: ServerProcess, stand_in: ImagesUpstream, client: openai.OpenAI
) -> None:
    raw = client.images.with_raw_response.generate(
        model="openai-gpt-image-1", prompt="A cute baby sea otter", n=2, size="1536x1024", quality="low"
    )
    result = raw.parse()
    sent, headers = stand_in.requests[-1], stand_in.headers[-1]
    assert sent == {
        "model": "img",
        "prompt": "A cute baby sea otter",
        "n": 2,
        "size": "1536x1024",
        "quality": "low",
    }
    assert headers["Authorization"] == "Bearer sk-upstream-secret"
    assert [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in result.data] == [(32, 32)] * 2
    body = raw.http_response.json()
    assert body["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"text_tokens": 7, "image_tokens": 0},
        "output_tokens": 544,
        "total_tokens": 551,
    }
    assert (body["quality"], body["size"]) == ("low", "1536x1024")
    row = ledger_row(server, raw.http_response.headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["status"]) == (7, 544, 200)
    assert row["cost_nano_usd"] == 7 * 5_000 + 544 * 40_000


def test_linked_images_are_fetched_and_served_from_our_media_store(
    server: ServerProcess, stand_in: ImagesUpstream, client: openai.OpenAI
) -> None:
    result = client.images.generate(
        model="linked", prompt="an otter", n=2, size="256x256", response_format="url"
    )
    assert "response_format" not in stand_in.requests[-1]  # ours to honour, not the upstream's
    for i, item in enumerate(result.data):
        assert item.url.startswith(f"{server.url}/media/")
        image = Image.open(io.BytesIO(httpx.get(item.url).content))
        assert image.size == (48, 32) and image.getpixel((0, 0)) == (0, i * 50, 0)
    # no usage from this upstream: counted as the local backends count it (quality auto: medium)
    b64 = client.images.with_raw_response.generate(model="linked", prompt="an otter", size="256x256")
    assert b64.http_response.json()["usage"]["output_tokens"] == 66  # ceil(1056 * 256^2 / 1024^2)


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        ("busy", openai.RateLimitError, 429),
        ("picky", openai.BadRequestError, 400),
        ("garbled", openai.APIStatusError, 502),
    ],
)
def test_upstream_failures_keep_their_meaning_and_bill_nothing(
    server: ServerProcess, client: openai.OpenAI, model: str, error: type[Exception], status: int
) -> None:
    with pytest.raises(error) as caught:
        client.images.generate(model=model, prompt="an otter", size="256x256")
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    row = ledger_row(server, caught.value.response.headers["x-request-id"])  # type: ignore[attr-defined]
    assert row["status"] == status and row["cost_nano_usd"] == 0
