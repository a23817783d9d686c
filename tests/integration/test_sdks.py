"""The official clients, unchanged, against a real server and a stand-in upstream."""

from __future__ import annotations

import gradient
import openai
import pytest

from tests.support.server import ServerProcess

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture
def oai(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1/", api_key=key, max_retries=0)


@pytest.fixture
def grad(server: ServerProcess, key: str) -> gradient.Gradient:
    return gradient.Gradient(model_access_key=key, base_url=server.url, max_retries=0)


def test_openai_lists_models(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list().data]
    assert "standin" in ids and "standin-down" in ids


def test_openai_chat(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="standin", messages=MESSAGES, temperature=0.7, max_tokens=50)
    assert resp.choices[0].message.content == "Paris is the capital of France."
    assert resp.model == "standin"
    assert resp.usage.completion_tokens == 7
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 7


def test_openai_chat_stream_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="standin", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris is the capital of France."
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_stream_without_usage_has_no_usage_chunk(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="standin", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_gradient_models_list_has_data_and_models(grad: gradient.Gradient) -> None:
    listing = grad.models.list()
    # The seed's example reads .data: the SDK keeps that extra field, as plain dicts.
    ids = [m["id"] for m in listing.data]
    assert "standin" in ids
    assert [m.id for m in listing.models] == ids


def test_gradient_chat(grad: gradient.Gradient) -> None:
    resp = grad.chat.completions.create(model="standin", messages=MESSAGES)
    assert resp.choices[0].message.content == "Paris is the capital of France."


def test_gradient_chat_stream(grad: gradient.Gradient) -> None:
    stream = grad.chat.completions.create(model="standin", messages=MESSAGES, stream=True)
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        == "Paris is the capital of France."
    )


def test_openai_sdk_error_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert info.value.request_id and info.value.request_id.startswith("req_")


def test_bad_key_is_401(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1/", api_key="sk-ig-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
