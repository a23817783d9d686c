"""POST /v1/async-invoke on a real server: the document's job object, the lifecycle through HTTP
with the real espeak-ng engine, media, billing (ledger), visibility, validation, cancel, listing."""

from __future__ import annotations

import io
import re
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ledger import ledger_row, rows_where
from tests.support.server import ServerProcess

CATALOG = """
builtins = false

[[models]]
id = "espeak-tts"
kind = "tts"
backend = "espeak"
input_price = 15.0
aliases = ["fal-ai/elevenlabs/tts/multilingual-v2"]

[[models]]
id = "piper-en-us-joe"
kind = "tts"
backend = "piper"
input_price = 15.0

[[models]]
id = "a-chat-model"
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
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
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TEXT = "This text-to-speech example uses a local voice."
ROOT = Path(__file__).resolve().parents[2]
PLUGIN = {
    "PYTHONPATH": str(ROOT),  # the test-only job kinds (tests/support/job_kinds.py)
    "INFERGATE_JOB_HANDLERS": "tests.support.job_kinds",
    "INFERGATE_WORKER_POLL_MS": "50",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("async"), CATALOG, env=PLUGIN).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No in-process worker: jobs stay QUEUED until a worker is started."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("idle"), CATALOG, env={**PLUGIN, "INFERGATE_WORKER": "0"}
    ).start()
    yield proc
    proc.stop()


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def submit(server: ServerProcess, secret: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/async-invoke", json=body, headers=auth(secret), timeout=30)


def wait_status(
    server: ServerProcess, secret: str, job_id: str, statuses: set[str], timeout: float = 60
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{server.url}/v1/async-invoke/{job_id}/status", headers=auth(secret), timeout=10)
        assert r.status_code == 200, r.text
        if r.json()["status"] in statuses:
            return r.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {r.json()['status']}")
        time.sleep(0.05)


def wait_glob(folder: Path, pattern: str, timeout: float = 30) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(folder.glob(pattern)) if folder.exists() else []
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern} in {folder}")
        time.sleep(0.02)


def test_speech_lifecycle_through_an_alias(server: ServerProcess) -> None:
    secret = server.create_key("lifecycle")["secret_key"]
    body = {
        "model_id": "fal-ai/elevenlabs/tts/multilingual-v2",
        "input": {"text": TEXT},
        "tags": [{"key": "type", "value": "test"}],
    }
    r = submit(server, secret, body)
    assert r.status_code == 202, r.text  # Accepted, as DigitalOcean's spec says
    job = r.json()
    assert set(job) == JOB_FIELDS  # exactly the document's fields
    assert job["status"] == "QUEUED" and job["model_id"] == body["model_id"]
    assert job["output"] is None and job["error"] is None and job["started_at"] is None
    assert job["completed_at"] is None and TIMESTAMP.match(job["created_at"])

    done = wait_status(server, secret, job["request_id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done
    full = httpx.get(f"{server.url}/v1/async-invoke/{job['request_id']}", headers=auth(secret)).json()
    assert set(full) == JOB_FIELDS
    assert TIMESTAMP.match(full["started_at"]) and TIMESTAMP.match(full["completed_at"])
    assert full["created_at"] <= full["started_at"] <= full["completed_at"]
    audio = full["output"]["audio"]
    assert set(audio) == {"url", "content_type", "file_name", "file_size"}
    assert audio["content_type"] == "audio/wav" and audio["file_name"].endswith(".wav")
    assert audio["url"].startswith(server.url + "/media/")
    fetched = httpx.get(audio["url"])  # the signed URL is the capability: no key needed
    assert fetched.status_code == 200 and len(fetched.content) == audio["file_size"]
    with wave.open(io.BytesIO(fetched.content)) as wav:  # a finished file: real sizes in the header
        assert wav.getnframes() * 2 == audio["file_size"] - 44 and wav.getnframes() > 8000

    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'infergate_jobs_finished_total{kind="async-invoke",status="COMPLETED"}' in metrics

    row = ledger_row(server, job["request_id"])  # billed once, per input character, under the job id
    assert row["model"] == "espeak-tts" and row["endpoint"] == "async-invoke" and row["status"] == 200
    assert row["input_tokens"] == len(TEXT) and row["cost_nano_usd"] == len(TEXT) * 15_000


def test_the_built_in_piper_voice(server: ServerProcess) -> None:
    secret = server.create_key("piper")["secret_key"]
    text = "Hello from piper, through a durable job."
    r = submit(server, secret, {"model_id": "piper-en-us-joe", "input": {"text": text, "speed": 1.2}})
    assert r.status_code == 202, r.text
    done = wait_status(server, secret, r.json()["request_id"], {"COMPLETED", "FAILED"}, timeout=120)
    assert done["status"] == "COMPLETED", done
    data = httpx.get(done["output"]["audio"]["url"]).content
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getframerate() == 22_050 and wav.getnframes() > 22_050  # over a second of speech
    assert ledger_row(server, done["request_id"])["input_tokens"] == len(text)


def test_slash_ids_and_the_gradient_spelling_without_v1(server: ServerProcess) -> None:
    secret = server.create_key("noprefix")["secret_key"]
    r = httpx.post(
        f"{server.url}/async-invoke",
        json={"model_id": "espeak-tts", "input": {"text": "Hi."}},
        headers=auth(secret),
    )
    assert r.status_code == 202, r.text
    assert wait_status(server, secret, r.json()["request_id"], {"COMPLETED"})["status"] == "COMPLETED"


def test_a_job_is_visible_only_to_its_key_and_the_admin(server: ServerProcess) -> None:
    owner = server.create_key("owner")["secret_key"]
    other = server.create_key("other")["secret_key"]
    job = submit(server, owner, {"model_id": "espeak-tts", "input": {"text": "Mine."}}).json()
    for path in ("", "/status", "/webhook"):
        r = httpx.get(f"{server.url}/v1/async-invoke/{job['request_id']}{path}", headers=auth(other))
        assert r.status_code == 404 and r.json()["error"]["code"] in ("job_not_found",)
    r = httpx.post(f"{server.url}/v1/async-invoke/{job['request_id']}/cancel", headers=auth(other))
    assert r.status_code == 404
    listed = httpx.get(f"{server.url}/v1/async-invoke", headers=auth(other)).json()
    assert job["request_id"] not in [j["request_id"] for j in listed["data"]]
    r = httpx.get(f"{server.url}/v1/async-invoke/{job['request_id']}", headers=server.admin())
    assert r.status_code == 200 and r.json()["request_id"] == job["request_id"]
    admin_list = httpx.get(f"{server.url}/v1/async-invoke?limit=100", headers=server.admin()).json()
    assert job["request_id"] in [j["request_id"] for j in admin_list["data"]]
    assert httpx.get(f"{server.url}/v1/async-invoke/{job['request_id']}").status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": {"text": "x"}}, 400, "model_id"),
        ({"model_id": "espeak-tts"}, 400, "input"),
        ({"model_id": "espeak-tts", "input": "text"}, 400, "input"),
        ({"model_id": "nope/not-here", "input": {"text": "x"}}, 404, "model_id"),
        ({"model_id": "a-chat-model", "input": {"text": "x"}}, 400, "model_id"),
        ({"model_id": "espeak-tts", "input": {}}, 400, "input.text"),
        ({"model_id": "espeak-tts", "input": {"text": ""}}, 400, "input.text"),
        ({"model_id": "espeak-tts", "input": {"text": "x" * 20_001}}, 400, "input.text"),
        ({"model_id": "espeak-tts", "input": {"text": "x", "speed": 10}}, 400, "input.speed"),
        ({"model_id": "espeak-tts", "input": {"text": "x", "speed": "fast"}}, 400, "input.speed"),
        (
            {"model_id": "espeak-tts", "input": {"text": "x", "output_format": "aac"}},
            400,
            "input.output_format",
        ),
        ({"model_id": "espeak-tts", "input": {"text": "x", "stability": 0.5}}, 400, "input.stability"),
        ({"model_id": "espeak-tts", "input": {"text": "x"}, "tags": [{"key": "k"}]}, 400, "tags.0.value"),
        ({"model_id": "espeak-tts", "input": {"text": "x"}, "tags": "type=test"}, 400, "tags"),
        (
            {"model_id": "espeak-tts", "input": {"text": "x"}, "webhook_url": "http://127.0.0.1:1/h"},
            400,
            "webhook_url",
        ),
        ({"model_id": "espeak-tts", "input": {"text": "x"}, "extra": 1}, 400, "extra"),
    ],
)
def test_bad_submissions_are_400s_naming_the_field(
    server: ServerProcess, body: dict[str, Any], status: int, param: str
) -> None:
    secret = server.create_key("bad")["secret_key"]
    r = submit(server, secret, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["message"]


def looks_like(fmt: str, data: bytes) -> bool:
    if fmt == "flac":
        return data[:4] == b"fLaC"
    return data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)  # mp3: a tag or a frame sync


@pytest.mark.parametrize(("fmt", "content_type"), [("mp3", "audio/mpeg"), ("flac", "audio/flac")])
def test_compressed_speech_formats(server: ServerProcess, fmt: str, content_type: str) -> None:
    secret = server.create_key(f"fmt-{fmt}")["secret_key"]
    r = submit(server, secret, {"model_id": "espeak-tts", "input": {"text": TEXT, "output_format": fmt}})
    done = wait_status(server, secret, r.json()["request_id"], {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED", done
    audio = done["output"]["audio"]
    assert audio["content_type"] == content_type and audio["file_name"].endswith(f".{fmt}")
    data = httpx.get(audio["url"]).content
    assert len(data) == audio["file_size"] and looks_like(fmt, data)


def test_an_unknown_voice_fails_the_job_with_a_clear_error(server: ServerProcess) -> None:
    secret = server.create_key("voice")["secret_key"]
    job = submit(
        server, secret, {"model_id": "espeak-tts", "input": {"text": "x", "voice": "no-such-voice"}}
    ).json()
    failed = wait_status(server, secret, job["request_id"], {"FAILED", "COMPLETED"})
    assert failed["status"] == "FAILED" and "no-such-voice" in failed["error"] and failed["output"] is None


def test_cancel_a_running_job_stops_its_task(server: ServerProcess, tmp_path: Path) -> None:
    secret = server.create_key("cancel-running")["secret_key"]
    hold = tmp_path / "hold"
    job = submit(
        server, secret, {"model_id": "espeak-tts", "input": {"text": f"HOLD {hold} then speak"}}
    ).json()
    wait_status(server, secret, job["request_id"], {"IN_PROGRESS"})
    wait_glob(hold, "started-*")  # the worker runs it (and holds)
    r = httpx.post(f"{server.url}/v1/async-invoke/{job['request_id']}/cancel", headers=auth(secret))
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED" and set(r.json()) == JOB_FIELDS
    assert r.json()["completed_at"] is not None and r.json()["error"]
    wait_glob(hold, "cancelled-*")  # the running task itself was cancelled, promptly
    again = httpx.post(f"{server.url}/v1/async-invoke/{job['request_id']}/cancel", headers=auth(secret))
    assert again.status_code == 409
    (hold / "release").write_text("")  # too late: the job stays cancelled, nothing is billed
    assert wait_status(server, secret, job["request_id"], {"CANCELLED"})["output"] is None
    assert rows_where(server, f"request_id = '{job['request_id']}'", timeout=0.5) == []


def test_cancel_queued_list_filters_and_restart(idle_server: ServerProcess, tmp_path: Path) -> None:
    secret = idle_server.create_key("lister")["secret_key"]
    ids = []
    for i in range(4):
        tags = [{"key": "type", "value": "even" if i % 2 == 0 else "odd"}, {"key": "n", "value": str(i)}]
        r = submit(
            idle_server, secret, {"model_id": "espeak-tts", "input": {"text": f"Job {i}."}, "tags": tags}
        )
        assert r.status_code == 202
        ids.append(r.json()["request_id"])
    url = f"{idle_server.url}/v1/async-invoke"
    cancelled = httpx.post(f"{url}/{ids[0]}/cancel", headers=auth(secret)).json()
    assert cancelled["status"] == "CANCELLED" and cancelled["started_at"] is None

    def listed(query: str) -> list[str]:
        r = httpx.get(f"{url}?{query}", headers=auth(secret))
        assert r.status_code == 200, r.text
        assert all(set(j) == JOB_FIELDS | {"tags"} for j in r.json()["data"])
        return [j["request_id"] for j in r.json()["data"]]

    assert listed("") == ids[::-1]
    assert listed("status=QUEUED") == ids[:0:-1]
    assert listed("status=CANCELLED") == [ids[0]]
    assert listed("status=queued,cancelled") == ids[::-1]
    assert listed("tag=type:even") == [ids[2], ids[0]]
    assert listed("tag=type:even&tag=n:2") == [ids[2]]
    page = httpx.get(f"{url}?limit=3", headers=auth(secret)).json()
    assert page["has_more"] and page["last_id"] == ids[1]
    assert listed(f"limit=3&after={page['last_id']}") == [ids[0]]
    for query, param in (("status=DONE", "status"), ("tag=nocolon", "tag"), ("limit=0", "limit")):
        r = httpx.get(f"{url}?{query}", headers=auth(secret))
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text

    # kill -9 with queued jobs: nothing is lost; a restart with a worker runs them all
    idle_server.proc.kill()  # type: ignore[union-attr]
    idle_server.proc.wait()  # type: ignore[union-attr]
    idle_server.env["INFERGATE_WORKER"] = "1"
    idle_server.start()
    for job_id in ids[1:]:
        done = wait_status(idle_server, secret, job_id, {"COMPLETED", "FAILED"})
        assert done["status"] == "COMPLETED", done
        ledger_row(idle_server, job_id)
    assert wait_status(idle_server, secret, ids[0], {"CANCELLED"})["output"] is None
    assert rows_where(idle_server, f"request_id = '{ids[0]}'", timeout=0.5) == []
