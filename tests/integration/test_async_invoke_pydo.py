"""pydo's async-invoke calls against infergate over HTTPS (pydo sends no token over plain http).

pydo 0.44 has `inference.create_async_invoke(body)` and the `async_invoke` facades (`create`,
`audio.speech.create`, `images.generate`, `audio.generate`); it has no status or result call, so
those are read with httpx over the same TLS connection settings.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from azure.core.exceptions import HttpResponseError
from pydo import Client

from tests.support.server import ServerProcess

CATALOG = """
builtins = false

[[models]]
id = "espeak-tts"
kind = "tts"
backend = "espeak"
input_price = 15.0
aliases = ["fal-ai/elevenlabs/tts/multilingual-v2"]
"""
JOB_FIELDS = {
    "request_id",
    "model_id",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "error",
    "output",
}


class TLS:
    def __init__(self, folder: Path) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.ca, self.cert, self.key = (str(folder / n) for n in ("ca.pem", "server.pem", "server.key"))
        ca.cert_pem.write_to_path(self.ca)
        cert.cert_chain_pems[0].write_to_path(self.cert)
        cert.private_key_pem.write_to_path(self.key)
        self.context = ssl.create_default_context(cafile=self.ca)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    return TLS(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tls: TLS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("pydo-async"),
        CATALOG,
        env={"INFERGATE_WORKER_POLL_MS": "50"},
        args=["--tls-cert", tls.cert, "--tls-key", tls.key],
    )
    proc.start(verify=tls.context)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def secret(server: ServerProcess) -> str:
    return server.create_key("pydo-async")["secret_key"]


@pytest.fixture(scope="module")
def client(server: ServerProcess, tls: TLS, secret: str) -> Iterator[Client]:
    with Client(
        token=secret,
        endpoint=server.url,
        inference_endpoint=server.url,
        connection_verify=tls.ca,
        retry_total=0,
    ) as c:
        yield c


def finished(server: ServerProcess, tls: TLS, secret: str, job_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {secret}"}
    deadline = time.monotonic() + 60
    with httpx.Client(verify=tls.context, headers=headers) as http:
        while True:
            status = http.get(f"{server.url}/v1/async-invoke/{job_id}/status").json()
            if status["status"] in ("COMPLETED", "FAILED"):
                return http.get(f"{server.url}/v1/async-invoke/{job_id}").json()
            assert time.monotonic() < deadline, status
            time.sleep(0.05)


def test_generated_create_async_invoke(client: Client, server: ServerProcess, tls: TLS, secret: str) -> None:
    job = client.inference.create_async_invoke(
        body={
            "model_id": "fal-ai/elevenlabs/tts/multilingual-v2",
            "input": {"text": "This text-to-speech example uses a local voice."},
            "tags": [{"key": "type", "value": "test"}],
        }
    )
    assert set(job) == JOB_FIELDS and job["status"] == "QUEUED"
    done = finished(server, tls, secret, job["request_id"])
    assert done["status"] == "COMPLETED", done
    audio = done["output"]["audio"]
    assert audio["content_type"] == "audio/wav" and audio["url"].startswith(server.url + "/media/")
    fetched = httpx.get(audio["url"], verify=tls.context)
    assert fetched.status_code == 200 and len(fetched.content) == audio["file_size"]


def test_speech_facade(client: Client, server: ServerProcess, tls: TLS, secret: str) -> None:
    job = client.async_invoke.audio.speech.create(
        input="Spoken through pydo's speech helper.",
        model_id="espeak-tts",
        tags=[{"key": "via", "value": "pydo"}],
    )
    assert job["status"] == "QUEUED" and job["model_id"] == "espeak-tts"
    assert finished(server, tls, secret, job["request_id"])["status"] == "COMPLETED"
    listed = httpx.get(
        f"{server.url}/v1/async-invoke?tag=via:pydo",
        headers={"Authorization": f"Bearer {secret}"},
        verify=tls.context,
    ).json()
    assert [j["request_id"] for j in listed["data"]] == [job["request_id"]]


def test_errors_reach_pydo_as_http_errors(client: Client) -> None:
    with pytest.raises(HttpResponseError) as info:
        client.async_invoke.images.generate(prompt="a city", model_id="fal-ai/not-served-here")
    assert info.value.status_code == 404
    with pytest.raises(HttpResponseError) as info:
        client.async_invoke.audio.speech.create(input="x", model_id="espeak-tts", speed=99)
    assert info.value.status_code == 400 and "input.speed" in str(info.value)
