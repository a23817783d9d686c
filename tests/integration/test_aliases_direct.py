"""Catalog aliases on the direct endpoints: a model asked for by one of its `aliases` is served
(speech with the real espeak-ng engine, chat and responses through the OpenAI-compatible stand-in)
and billed under its real id; an alias of another kind is a 400 with a grammatical message."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.ledger import ledger_row
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

SPEECH_ALIAS = "fal-ai/elevenlabs/tts/multilingual-v2"
CHAT_ALIAS = "vendor/standin-chat"


def catalog(base_url: str) -> str:
    return f"""
builtins = false

[[models]]
id = "espeak-tts"
kind = "tts"
backend = "espeak"
input_price = 15.0
aliases = ["{SPEECH_ALIAS}"]

[[models]]
id = "standin-real"
backend = "openai"
base_url = "{base_url}"
upstream_model = "standin"
input_price = 1.0
output_price = 2.0
aliases = ["{CHAT_ALIAS}"]

[[models]]
id = "upstream-image"
kind = "image"
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
aliases = ["vendor/an-image"]
"""


@pytest.fixture(scope="module")
def alias_server(
    upstream: StandInUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("aliases"), catalog(upstream.base_url)).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def headers(alias_server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {alias_server.create_key('aliases')['secret_key']}"}


def test_speech_by_alias_is_served_and_billed_under_the_real_id(
    alias_server: ServerProcess, headers: dict[str, str]
) -> None:
    r = httpx.post(
        f"{alias_server.url}/v1/audio/speech",
        headers=headers,
        json={"model": SPEECH_ALIAS, "input": "Hello there.", "voice": "alloy", "response_format": "wav"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.content[:4] == b"RIFF"
    row = ledger_row(alias_server, r.headers["x-request-id"])
    assert row["model"] == "espeak-tts"
    assert row["status"] == 200


def test_chat_by_alias_is_served_and_billed_under_the_real_id(
    alias_server: ServerProcess, headers: dict[str, str], upstream: StandInUpstream
) -> None:
    r = httpx.post(
        f"{alias_server.url}/v1/chat/completions",
        headers=headers,
        json={"model": CHAT_ALIAS, "messages": [{"role": "user", "content": "capital of France?"}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("Paris")
    assert upstream.requests[-1]["model"] == "standin"  # the upstream's name, not the alias
    row = ledger_row(alias_server, r.headers["x-request-id"])
    assert row["model"] == "standin-real"


def test_responses_by_alias_is_served_and_billed_under_the_real_id(
    alias_server: ServerProcess, headers: dict[str, str]
) -> None:
    r = httpx.post(
        f"{alias_server.url}/v1/responses",
        headers=headers,
        json={"model": CHAT_ALIAS, "input": "capital of France?", "store": False},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["output"][0]["content"][0]["text"]
    row = ledger_row(alias_server, r.headers["x-request-id"])
    assert row["model"] == "standin-real"


def test_an_alias_of_another_kind_is_a_400_with_the_right_article(
    alias_server: ServerProcess, headers: dict[str, str]
) -> None:
    r = httpx.post(
        f"{alias_server.url}/v1/audio/speech",
        headers=headers,
        json={"model": CHAT_ALIAS, "input": "Hi.", "voice": "alloy"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "model"
    assert error["message"] == (
        f"The model '{CHAT_ALIAS}' is a chat model, not a text-to-speech (tts) model."
    )
    r = httpx.post(
        f"{alias_server.url}/v1/chat/completions",
        headers=headers,
        json={"model": SPEECH_ALIAS, "messages": [{"role": "user", "content": "Hi."}]},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == f"The model '{SPEECH_ALIAS}' is a tts model, not a chat model."
    r = httpx.post(
        f"{alias_server.url}/v1/chat/completions",
        headers=headers,
        json={"model": "vendor/an-image", "messages": [{"role": "user", "content": "Hi."}]},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == "The model 'vendor/an-image' is an image model, not a chat model."
