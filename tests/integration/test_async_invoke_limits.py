"""async-invoke jobs and the key's limits, and the listing's query errors, on a real server with
the real espeak-ng engine: a spent monthly budget fails the job at once (its 429 message as the
job's error); a rate refusal puts the job back in the queue without a `started_at`; query errors
name the parameter as sent, come after authentication, and an unknown `after` cursor is a 400."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import INFERGATE, ServerProcess

CATALOG = """
builtins = false

[[models]]
id = "espeak-tts"
kind = "tts"
backend = "espeak"
input_price = 15.0
"""
LIMITS = "/v2/gen-ai/models/api_keys/{}/limits"
NO_LIMITS = {"rpm": None, "tpm": None, "max_concurrency": None, "monthly_budget_usd": None}
# 300 characters at 15 USD per 1M characters: 0.0045 USD, far over a budget of 0.000001 USD
LONG_TEXT = "A sentence for the budget test. " * 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("async-limits"), CATALOG, env={"INFERGATE_WORKER_POLL_MS": "50"}
    ).start()
    yield proc
    proc.stop()


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def limited_key(server: ServerProcess, name: str, **limits: Any) -> dict[str, Any]:
    key = server.create_key(name)
    r = httpx.put(
        server.url + LIMITS.format(key["uuid"]),
        json={**NO_LIMITS, **limits},
        headers=server.admin(),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return key


def submit(server: ServerProcess, secret: str, text: str = "hello") -> str:
    body = {"model_id": "espeak-tts", "input": {"text": text}}
    r = httpx.post(f"{server.url}/v1/async-invoke", json=body, headers=auth(secret), timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["request_id"]


def job(server: ServerProcess, secret: str, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v1/async-invoke/{job_id}/status", headers=auth(secret), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def job_row(server: ServerProcess, job_id: str) -> dict[str, Any]:
    with sqlite3.connect(server.data_dir / "infergate.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None
    return dict(row)


@pytest.mark.parametrize("concurrency", ["0", "-3"])
def test_a_worker_without_concurrency_does_not_start(concurrency: str, tmp_path: Path) -> None:
    env = {**os.environ, "INFERGATE_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [INFERGATE, "worker", "--concurrency", concurrency],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"--concurrency must be at least 1, got {concurrency}" in result.stderr, result.stderr
    assert not (tmp_path / "infergate.db").exists()  # refused before touching the database


def test_a_spent_budget_fails_the_job_at_once_with_the_reason(server: ServerProcess) -> None:
    key = limited_key(server, "spent", monthly_budget_usd=0.000001)
    job_id = submit(server, key["secret_key"], LONG_TEXT)
    deadline = time.monotonic() + 30
    seen = []
    while True:
        status = job(server, key["secret_key"], job_id)
        seen.append(status["status"])
        # a job waiting again in the queue never shows when it (once) started
        assert status["status"] != "QUEUED" or status["started_at"] is None, status
        if status["status"] in ("FAILED", "COMPLETED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, f"job still {status['status']} (was {seen[-5:]})"
        time.sleep(0.05)
    assert status["status"] == "FAILED", status
    assert "monthly budget" in status["error"], status
    assert job_row(server, job_id)["attempts"] == 1  # not retried


def test_a_rate_refusal_requeues_the_job_without_a_started_at(server: ServerProcess) -> None:
    key = limited_key(server, "one-per-minute", rpm=1)
    first = submit(server, key["secret_key"])
    deadline = time.monotonic() + 60
    while job(server, key["secret_key"], first)["status"] not in ("COMPLETED", "FAILED"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job(server, key["secret_key"], first)["status"] == "COMPLETED"
    second = submit(server, key["secret_key"])  # the minute's one request is spent: refused, retried later
    deadline = time.monotonic() + 30
    while True:
        row = job_row(server, second)
        if row["attempts"] >= 1 and row["status"] == "QUEUED":
            break
        assert row["status"] in ("QUEUED", "IN_PROGRESS"), row
        assert time.monotonic() < deadline, row
        time.sleep(0.05)
    assert "Rate limit" in row["error"] and row["started_us"] is None, row
    assert row["due_us"] > time.time() * 1e6  # after its Retry-After, within its attempts
    status = job(server, key["secret_key"], second)
    assert (status["status"], status["started_at"], status["error"]) == ("QUEUED", None, None)


def test_query_errors_name_the_parameter_and_come_after_authentication(server: ServerProcess) -> None:
    key = server.create_key("queries")
    for path, query, param in (
        ("/v1/async-invoke", "limit=0", "limit"),
        ("/v1/async-invoke", "limit=abc", "limit"),
        ("/v1/conversations/conv_x/items", "order=sideways", "order"),
        ("/v1/conversations/conv_x/items", "limit=1000", "limit"),
        ("/v1/responses/resp_x/input_items", "order=sideways", "order"),
        ("/v1/responses/resp_x/input_items", "limit=0", "limit"),
    ):
        anonymous = httpx.get(f"{server.url}{path}?{query}", timeout=10)
        assert anonymous.status_code == 401, (path, query, anonymous.text)
        wrong = httpx.get(f"{server.url}{path}?{query}", headers=auth("sk-not-a-key"), timeout=10)
        assert wrong.status_code == 401, (path, query, wrong.text)
        r = httpx.get(f"{server.url}{path}?{query}", headers=auth(key["secret_key"]), timeout=10)
        assert r.status_code == 400, (path, query, r.text)
        assert r.json()["error"]["param"] == param, r.text
        assert r.json()["error"]["message"].startswith(f"{param}:"), r.text


def test_an_unknown_after_cursor_is_a_400(server: ServerProcess) -> None:
    mine, other = server.create_key("cursor-a"), server.create_key("cursor-b")
    ids = [submit(server, mine["secret_key"]) for _ in range(3)]
    theirs = submit(server, other["secret_key"])
    listed = httpx.get(
        f"{server.url}/v1/async-invoke", params={"limit": 2}, headers=auth(mine["secret_key"]), timeout=10
    ).json()
    assert [j["request_id"] for j in listed["data"]] == ids[::-1][:2] and listed["has_more"]
    page = httpx.get(
        f"{server.url}/v1/async-invoke",
        params={"after": listed["last_id"]},
        headers=auth(mine["secret_key"]),
        timeout=10,
    ).json()
    assert [j["request_id"] for j in page["data"]] == [ids[0]]
    for cursor in ("doesnotexist", theirs):  # another key's job is no cursor either
        r = httpx.get(
            f"{server.url}/v1/async-invoke",
            params={"after": cursor},
            headers=auth(mine["secret_key"]),
            timeout=10,
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "after", r.text
