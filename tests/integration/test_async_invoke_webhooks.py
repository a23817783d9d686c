"""Webhooks of async-invoke jobs against a local receiver: Standard Webhooks HMAC-SHA256 signature,
retries with backoff, the delivery log on the job, the allow-list (secure by default)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import INFERGATE, ServerProcess, free_port

CATALOG = """
builtins = false

[[models]]
id = "espeak-tts"
kind = "tts"
backend = "espeak"
"""
SECRET_BYTES = secrets.token_bytes(24)
SECRET = "whsec_" + base64.b64encode(SECRET_BYTES).decode()
ROOT = Path(__file__).resolve().parents[2]
CLOSED_PORT = free_port()  # allowed, but nothing listens there


class Receiver:
    """Records every POST; answers each path with its scripted status codes (the last repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list[int]] = {}
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                codes = receiver.script.get(self.path, [200])
                count = sum(1 for r in receiver.received if r["path"] == self.path)
                receiver.received.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body, "at": time.monotonic()}
                )
                self.send_response(codes[min(count, len(codes) - 1)])
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["path"] == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.httpd.shutdown()


@pytest.fixture(scope="module")
def server(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "PYTHONPATH": str(ROOT),
        "INFERGATE_JOB_HANDLERS": "tests.support.job_kinds",
        "INFERGATE_WORKER_POLL_MS": "50",
        "INFERGATE_WEBHOOK_ALLOWED_URLS": f"http://127.0.0.1:{receiver.port}/hooks, http://127.0.0.1:{CLOSED_PORT}/hooks",
        "INFERGATE_WEBHOOK_SECRET": SECRET,
        "INFERGATE_WEBHOOK_BACKOFF_MS": "100",
        "INFERGATE_WEBHOOK_MAX_ATTEMPTS": "3",
    }
    proc = ServerProcess(tmp_path_factory.mktemp("webhooks"), CATALOG, env=env).start()
    yield proc
    proc.stop()


def verify(headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (the Standard Webhooks scheme)."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(SECRET_BYTES, signed, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, headers["webhook-signature"])


def wait_for(condition: Any, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def submit(
    server: ServerProcess, secret: str, webhook_url: str, text: str = "Webhook test."
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/async-invoke",
        json={"model_id": "espeak-tts", "input": {"text": text}, "webhook_url": webhook_url},
        headers={"Authorization": f"Bearer {secret}"},
    )


def webhook_log(server: ServerProcess, secret: str, job_id: str) -> dict[str, Any]:
    r = httpx.get(
        f"{server.url}/v1/async-invoke/{job_id}/webhook", headers={"Authorization": f"Bearer {secret}"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_signed_delivery_retried_with_backoff_until_accepted(
    server: ServerProcess, receiver: Receiver
) -> None:
    receiver.script["/hooks/flaky"] = [500, 502, 204]
    secret = server.create_key("hooks")["secret_key"]
    url = f"http://127.0.0.1:{receiver.port}/hooks/flaky"
    r = submit(server, secret, url)
    assert r.status_code == 202, r.text
    job_id = r.json()["request_id"]
    hits = wait_for(
        lambda: len(receiver.at("/hooks/flaky")) >= 3 and receiver.at("/hooks/flaky"), what="3 deliveries"
    )
    assert len({h["headers"]["webhook-id"] for h in hits}) == 1  # one message, delivered three times
    for hit in hits:
        assert verify(hit["headers"], hit["body"])
        assert hit["headers"]["content-type"] == "application/json"
        assert abs(int(hit["headers"]["webhook-timestamp"]) - time.time()) < 120
    tampered = hits[-1]["body"].replace(b"COMPLETED", b"FAILED")
    assert not verify(hits[-1]["headers"], tampered)
    job = json.loads(hits[-1]["body"])
    assert job["request_id"] == job_id and job["status"] == "COMPLETED"
    assert job["output"]["audio"]["file_size"] > 0
    assert hits[1]["at"] - hits[0]["at"] >= 0.1 and hits[2]["at"] - hits[1]["at"] >= 0.2  # backoff doubles

    log = wait_for(
        lambda: (w := webhook_log(server, secret, job_id))["status"] == "delivered" and w, what="log"
    )
    assert log["url"] == url
    assert [d["status_code"] for d in log["deliveries"]] == [500, 502, 204]
    assert [d["attempt"] for d in log["deliveries"]] == [1, 2, 3]


def test_a_receiver_that_never_accepts_is_given_up_on(server: ServerProcess, receiver: Receiver) -> None:
    receiver.script["/hooks/down"] = [503]
    secret = server.create_key("hooks-down")["secret_key"]
    job_id = submit(server, secret, f"http://127.0.0.1:{receiver.port}/hooks/down").json()["request_id"]
    log = wait_for(
        lambda: (w := webhook_log(server, secret, job_id))["status"] == "failed" and w, what="failed"
    )
    assert [d["status_code"] for d in log["deliveries"]] == [503, 503, 503]  # INFERGATE_WEBHOOK_MAX_ATTEMPTS
    assert len(receiver.at("/hooks/down")) == 3


def test_an_unreachable_receiver_is_logged_with_the_error(server: ServerProcess) -> None:
    secret = server.create_key("hooks-gone")["secret_key"]
    job_id = submit(server, secret, f"http://127.0.0.1:{CLOSED_PORT}/hooks/x").json()["request_id"]
    log = wait_for(
        lambda: (w := webhook_log(server, secret, job_id))["status"] == "failed" and w, what="failed"
    )
    assert [d["status_code"] for d in log["deliveries"]] == [None, None, None]
    assert all(d["error"] and "onnect" in d["error"] for d in log["deliveries"]), log


def test_a_cancelled_job_is_notified_too(server: ServerProcess, receiver: Receiver, tmp_path: Path) -> None:
    secret = server.create_key("hooks-cancel")["secret_key"]
    hold = tmp_path / "hold"
    job_id = submit(
        server, secret, f"http://127.0.0.1:{receiver.port}/hooks/cancelled", f"HOLD {hold}"
    ).json()["request_id"]
    wait_for(lambda: list(hold.glob("started-*")) if hold.exists() else [], what="the job to start")
    r = httpx.post(
        f"{server.url}/v1/async-invoke/{job_id}/cancel", headers={"Authorization": f"Bearer {secret}"}
    )
    assert r.status_code == 200
    [hit] = wait_for(lambda: receiver.at("/hooks/cancelled"), what="the notification")
    body = json.loads(hit["body"])
    assert (
        body["status"] == "CANCELLED" and body["request_id"] == job_id and verify(hit["headers"], hit["body"])
    )


@pytest.mark.parametrize(
    "path",
    ["/other", "/hooksevil", "/HOOKS/x"],
)
def test_urls_outside_the_allow_list_are_refused(
    server: ServerProcess, receiver: Receiver, path: str
) -> None:
    secret = server.create_key("hooks-refused")["secret_key"]
    for url in (f"http://127.0.0.1:{receiver.port}{path}", f"http://127.0.0.1:{receiver.port + 1}/hooks/x"):
        r = submit(server, secret, url)
        assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url", r.text
    for url in ("ftp://127.0.0.1/hooks", "not a url", f"http://user:pw@127.0.0.1:{receiver.port}/hooks/x"):
        r = submit(server, secret, url)
        assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url", r.text


def test_an_allow_list_without_a_secret_stops_the_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "INFERGATE_DATA_DIR": str(tmp_path),
        "INFERGATE_WEBHOOK_ALLOWED_URLS": "https://hooks.example.com/",
        "INFERGATE_WEBHOOK_SECRET": "",
    }
    for command in (["serve", "--port", "9"], ["worker"]):
        result = subprocess.run([INFERGATE, *command], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "INFERGATE_WEBHOOK_SECRET" in result.stderr, result.stderr
    env |= {"INFERGATE_WEBHOOK_SECRET": "s", "INFERGATE_WEBHOOK_ALLOWED_URLS": "ftp://x/"}
    result = subprocess.run([INFERGATE, "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "INFERGATE_WEBHOOK_ALLOWED_URLS" in result.stderr, result.stderr
