"""async-invoke forwarded to a fal-compatible queue upstream (a local stand-in of fal's queue
protocol): submit, poll, result, cancel, the upstream's refusal, billing per second/image/character,
and a worker killed mid-job resuming the same upstream request instead of paying for a second."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fal import StandInFal
from tests.support.ledger import ledger_row
from tests.support.server import INFERGATE, ServerProcess

FAL_KEY = "fal-test-key"


def catalog(fal: StandInFal) -> str:
    return f"""
builtins = false

[[models]]
id = "fal-ai/stable-audio-25/text-to-audio"
kind = "audio"
backend = "fal"
base_url = "{fal.base_url}"
api_key_env = "FAL_KEY"
audio_second_price = 0.002

[[models]]
id = "fal-ai/fast-sdxl"
kind = "image"
backend = "fal"
base_url = "{fal.base_url}"
api_key_env = "FAL_KEY"
image_price = 0.003

[[models]]
id = "fal-ai/elevenlabs/tts/multilingual-v2"
kind = "tts"
backend = "fal"
base_url = "{fal.base_url}"
api_key_env = "FAL_KEY"
input_price = 100.0
"""


@pytest.fixture(scope="module")
def fal() -> Iterator[StandInFal]:
    stand_in = StandInFal(key=FAL_KEY).start()
    yield stand_in
    stand_in.stop()


ENV = {"FAL_KEY": FAL_KEY, "INFERGATE_WORKER_POLL_MS": "50"}


@pytest.fixture(scope="module")
def server(fal: StandInFal, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("fal"), catalog(fal), env=ENV).start()
    yield proc
    proc.stop()


def auth(server: ServerProcess, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.create_key(name)['secret_key']}"}


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def job_status(server: ServerProcess, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v1/async-invoke/{job_id}", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def finished(server: ServerProcess, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (j := job_status(server, headers, job_id))["status"] in {"COMPLETED", "FAILED", "CANCELLED"} and j
        ),
        what=f"job {job_id} to finish",
    )


def submit(
    server: ServerProcess, headers: dict[str, str], model_id: str, data: dict[str, Any]
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/async-invoke",
        json={"model_id": model_id, "input": data},
        headers=headers,
        timeout=30,
    )


def test_text_to_audio_is_forwarded_and_billed_per_second(server: ServerProcess, fal: StandInFal) -> None:
    headers = auth(server, "fal-audio")
    data = {"prompt": "Techno song with futuristic sounds", "seconds_total": 60}
    r = submit(server, headers, "fal-ai/stable-audio-25/text-to-audio", data)
    assert r.status_code == 202, r.text  # Accepted
    job = finished(server, headers, r.json()["request_id"])
    assert job["status"] == "COMPLETED", job
    audio = job["output"]["audio"]
    assert set(audio) >= {"url", "content_type", "file_name", "file_size"}
    sent = [s for s in fal.submitted if s["input"] == data]
    assert len(sent) == 1 and sent[0]["model"] == "fal-ai/stable-audio-25/text-to-audio"
    row = ledger_row(server, job["request_id"])
    assert row["status"] == 200 and row["endpoint"] == "async-invoke"
    assert row["cost_nano_usd"] == 60 * 2_000_000  # 60 s at $0.002/s


def test_images_and_speech_bill_per_image_and_character(server: ServerProcess) -> None:
    headers = auth(server, "fal-media")
    image = submit(server, headers, "fal-ai/fast-sdxl", {"prompt": "a lighthouse", "num_images": 2})
    speech = submit(server, headers, "fal-ai/elevenlabs/tts/multilingual-v2", {"text": "Hello there"})
    assert image.status_code == speech.status_code == 202, (image.text, speech.text)
    image_job = finished(server, headers, image.json()["request_id"])
    speech_job = finished(server, headers, speech.json()["request_id"])
    assert len(image_job["output"]["images"]) == 2
    assert ledger_row(server, image_job["request_id"])["cost_nano_usd"] == 2 * 3_000_000
    assert ledger_row(server, speech_job["request_id"])["cost_nano_usd"] == len("Hello there") * 100_000


@pytest.mark.parametrize(
    ("model_id", "data", "param"),
    [
        ("fal-ai/stable-audio-25/text-to-audio", {"prompt": "x"}, "input.seconds_total"),
        (
            "fal-ai/stable-audio-25/text-to-audio",
            {"prompt": "x", "seconds_total": 10_000},
            "input.seconds_total",
        ),
        ("fal-ai/stable-audio-25/text-to-audio", {"seconds_total": 5}, "input.prompt"),
        ("fal-ai/fast-sdxl", {"prompt": "x", "num_images": 11}, "input.num_images"),
        ("fal-ai/elevenlabs/tts/multilingual-v2", {"text": ""}, "input.text"),
    ],
)
def test_bad_input_is_400_at_submit(
    server: ServerProcess, model_id: str, data: dict[str, Any], param: str
) -> None:
    r = submit(server, auth(server, "fal-bad"), model_id, data)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_the_upstreams_refusal_fails_the_job_with_its_words(server: ServerProcess) -> None:
    headers = auth(server, "fal-refused")
    r = submit(server, headers, "fal-ai/fast-sdxl", {"prompt": "refuse"})
    job = finished(server, headers, r.json()["request_id"])
    assert job["status"] == "FAILED" and "refused" in job["error"], job
    assert ledger_row(server, job["request_id"])["cost_nano_usd"] == 0


def test_cancel_cancels_upstream(server: ServerProcess, fal: StandInFal) -> None:
    headers = auth(server, "fal-cancel")
    fal.hold.clear()  # the upstream request stays IN_PROGRESS
    try:
        r = submit(server, headers, "fal-ai/fast-sdxl", {"prompt": "cancel me"})
        job_id = r.json()["request_id"]
        wait_for(
            lambda: any(s["input"].get("prompt") == "cancel me" for s in fal.submitted),
            what="the upstream submit",
        )
        upstream_id = next(s["request_id"] for s in fal.submitted if s["input"].get("prompt") == "cancel me")
        cancelled = httpx.post(f"{server.url}/v1/async-invoke/{job_id}/cancel", headers=headers, timeout=10)
        assert cancelled.status_code in (200, 202), cancelled.text
        wait_for(lambda: upstream_id in fal.cancelled, what="the upstream cancel")
        assert job_status(server, headers, job_id)["status"] == "CANCELLED"
    finally:
        fal.hold.set()


def test_a_worker_killed_mid_job_resumes_the_same_upstream_request(fal: StandInFal, tmp_path: Path) -> None:
    env = {**ENV, "INFERGATE_WORKER": "0", "INFERGATE_JOB_LEASE_SECONDS": "2"}
    server = ServerProcess(tmp_path, catalog(fal), env=env).start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        headers = auth(server, "fal-kill")
        fal.hold.clear()
        r = submit(server, headers, "fal-ai/fast-sdxl", {"prompt": "survive a crash"})
        job_id = r.json()["request_id"]
        log = (tmp_path / "worker.log").open("ab")
        workers.append(subprocess.Popen([INFERGATE, "worker"], env=server.env, stdout=log, stderr=log))
        mine = lambda: [s for s in fal.submitted if s["input"].get("prompt") == "survive a crash"]  # noqa: E731
        wait_for(mine, what="the first worker's upstream submit")
        upstream_id = mine()[0]["request_id"]
        wait_for(lambda: fal.polls.get(upstream_id, 0) >= 2, what="the first worker polling")
        workers[0].kill()  # kill -9 while the upstream request runs
        workers[0].wait()
        fal.hold.set()
        workers.append(subprocess.Popen([INFERGATE, "worker"], env=server.env, stdout=log, stderr=log))
        job = finished(server, headers, job_id)
        assert job["status"] == "COMPLETED", job
        assert len(mine()) == 1  # the second worker polled the first one's upstream request
        assert ledger_row(server, job_id)["cost_nano_usd"] == 3_000_000
    finally:
        fal.hold.set()
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(30)
        server.stop()
