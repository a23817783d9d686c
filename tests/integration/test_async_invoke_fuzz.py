"""Hypothesis against /v1/async-invoke on a real server: any body, any query, any id is answered
without a 5xx, errors in OpenAI's shape naming a field, and accepted jobs in the document's shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.server import ServerProcess

CATALOG = """
builtins = false

[[models]]
id = "espeak-tts"
kind = "tts"
backend = "espeak"
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
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | FLOATS | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
SPEECH_INPUT = st.fixed_dictionaries(
    {"text": st.text(min_size=1, max_size=40)},
    optional={
        "voice": st.one_of(st.none(), st.text(max_size=20), JSON),
        "speed": st.one_of(FLOATS, st.integers(), JSON),
        "output_format": st.sampled_from(["wav", "pcm", "mp3", "aac", "", "WAV"]) | JSON,
    },
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "model_id": st.sampled_from(["espeak-tts", "fal-ai/elevenlabs/tts/multilingual-v2", "x/y", ""])
        | JSON,
        "input": SPEECH_INPUT | JSON,
        "tags": st.lists(st.fixed_dictionaries({"key": st.text(max_size=70), "value": st.text(max_size=20)}))
        | JSON,
        "webhook_url": st.sampled_from(["http://127.0.0.1:1/x", "ftp://x", "http://[::1", ""]) | JSON,
    },
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("fuzz-async"), CATALOG, env={"INFERGATE_WORKER": "0"}
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    secret = server.create_key("fuzz")["secret_key"]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as client:
        yield client


def check(r: httpx.Response) -> Any:
    assert r.status_code < 500, r.text
    body = r.json()
    if r.status_code >= 400:
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    return body


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=BODY)
def test_any_submission(http: httpx.Client, body: dict[str, Any]) -> None:
    r = http.post("/v1/async-invoke", json=body)
    answer = check(r)
    if r.status_code == 202:
        assert set(answer) == JOB_FIELDS and answer["status"] == "QUEUED"
    else:
        assert r.status_code in (400, 404), r.text
        assert answer["error"]["param"], answer


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    query=st.dictionaries(
        st.sampled_from(["status", "tag", "model_id", "limit", "after"]), st.text(max_size=80), max_size=4
    ),
    job_id=st.text(min_size=1, max_size=100).filter(lambda s: "/" not in s and s not in (".", "..")),
)
def test_any_query_and_id(http: httpx.Client, query: dict[str, str], job_id: str) -> None:
    listed = check(http.get("/v1/async-invoke", params=query))
    if "data" in listed:
        assert listed["object"] == "list"
    for path in ("", "/status", "/webhook"):
        r = http.get(f"/v1/async-invoke/{quote(job_id, safe='')}{path}")
        assert r.status_code < 500, r.text
    r = http.post(f"/v1/async-invoke/{quote(job_id, safe='')}/cancel")
    assert r.status_code < 500, r.text
