"""GET /v1/models/{id} (and without /v1) with the unchanged openai SDK: the OpenAI model object,
ids and aliases holding slashes, the id asked for echoed back, 404 model_not_found for an unknown
model or one that cannot serve (the listing's rule), 401 without a key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream


@pytest.fixture(scope="module")
def models_server(
    upstream: StandInUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    data = Path(tmp_path_factory.mktemp("retrieve"))
    (data / "not-a-model.gguf").write_bytes(b"this is not a GGUF file\n" * 64)
    catalog = (
        "builtins = false\n\n"
        f'[[models]]\nid = "standin"\nbackend = "openai"\nbase_url = "{upstream.base_url}"\n'
        'owned_by = "tests"\naliases = ["fal-ai/fast-sdxl"]\n\n'
        f'[[models]]\nid = "org/with-slash"\nbackend = "openai"\nbase_url = "{upstream.base_url}"\n\n'
        f'[[models]]\nid = "broken-gguf"\nbackend = "llama_cpp"\npath = "{data / "not-a-model.gguf"}"\n'
    )
    proc = ServerProcess(data, catalog).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(models_server: ServerProcess) -> openai.OpenAI:
    return models_server.openai_client("retrieve")


def test_retrieve_a_listed_model(client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    model = client.models.retrieve("standin")
    assert model.model_dump() == listed["standin"].model_dump()
    assert (model.id, model.object, model.owned_by) == ("standin", "model", "tests")
    assert isinstance(model.created, int)


def test_ids_and_aliases_with_slashes(client: openai.OpenAI) -> None:
    assert client.models.retrieve("org/with-slash").id == "org/with-slash"
    alias = client.models.retrieve("fal-ai/fast-sdxl")
    assert alias.id == "fal-ai/fast-sdxl"  # the id asked for, as OpenAI answers
    assert alias.created == client.models.retrieve("standin").created


@pytest.mark.parametrize("model_id", ["no-such-model", "org/no-such", "broken-gguf"])
def test_unknown_or_failing_model_is_a_404_model_not_found(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(model_id)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert model_id in error["message"]


def test_without_the_v1_prefix_and_without_a_key(models_server: ServerProcess) -> None:
    secret = models_server.create_key("plain")["secret_key"]
    r = httpx.get(
        f"{models_server.url}/models/fal-ai/fast-sdxl", headers={"Authorization": f"Bearer {secret}"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["object"], body["owned_by"]) == ("fal-ai/fast-sdxl", "model", "tests")
    assert httpx.get(f"{models_server.url}/v1/models/standin").status_code == 401
