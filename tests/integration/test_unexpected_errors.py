"""An unexpected exception anywhere is an OpenAI-shaped 500 with a request id, CORS headers, a
metric, a traceback in the log and an access-log line; mid-stream it is an SSE error event.

Bugs can't be provoked through the public API of a correct server, so these tests run the real app
in-process with a backend that fails like a bug would (a test backend, as the stand-in upstream
is a test provider) and one extra route that raises.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from infergate.app import create_app
from infergate.catalog import Catalog
from infergate.config import Settings, normalize_database_url
from infergate.engines.base import ChatEngine, ChatRequest, ChatResult
from infergate.observability import ACCESS_LOG, metrics_payload
from infergate.platform import Platform
from infergate.usage import Usage

pytestmark = pytest.mark.anyio
ORIGIN = "http://panel.example"
CATALOG = """builtins = false
[[models]]
id = "buggy"
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
input_price = 1.0
output_price = 1.0
"""


class BuggyEngine(ChatEngine):
    """Fails the way a programming error would: not with one of our error types."""

    async def complete(self, request: ChatRequest) -> ChatResult:
        request.context.usage.input_tokens = 7  # consumed before the bug: still billed
        raise KeyError("bug in complete")

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any] | Usage]:
        yield {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "buggy",
            "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
        }
        raise ZeroDivisionError("bug mid-stream")


def _settings(tmp_path: Path) -> Settings:
    (tmp_path / "catalog.toml").write_text(CATALOG)
    return Settings(
        data_dir=tmp_path,
        database_url=normalize_database_url(f"sqlite:///{tmp_path / 'db.sqlite'}"),
        redis_url=None,
        config_path=str(tmp_path / "catalog.toml"),
        admin_token="admin",
        cors_origins=(ORIGIN,),
        max_body_bytes=1 << 20,
        access_log=True,
        ledger_flush_ms=50,
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, Platform]]:
    settings = _settings(tmp_path)
    application = create_app(settings)

    @application.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    platform = Platform(settings, Catalog.load(settings.config_path, tmp_path))
    await platform.start()
    await platform.engines["buggy"].close()
    platform.engines["buggy"] = BuggyEngine(platform.catalog.get("buggy"))
    application.state.platform = platform
    yield application, platform
    await platform.close()


def _client(application: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://test")


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = metrics_payload()[0].decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            pairs = tuple(sorted(tuple(p.split("=", 1)) for p in labels.split(",")))
            out[tuple((k, v.strip('"')) for k, v in pairs)] = float(value)
    return out


def _count(route: str, status: str) -> float:
    return sum(
        v
        for k, v in _samples("infergate_requests_total").items()
        if ("route", route) in k and ("status", status) in k
    )


async def _key(platform: Platform) -> str:
    _record, secret = platform.keys.create("t", "test")
    return secret


@pytest.mark.parametrize("path", ["/v1/boom", "/v1/chat/completions"])
async def test_unexpected_error_is_a_complete_500(
    app: tuple[FastAPI, Platform], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    application, platform = app
    stream = io.StringIO()
    ACCESS_LOG.stream = stream
    before = _count(path, "500")
    secret = await _key(platform)
    async with _client(application) as client:
        if path == "/v1/boom":
            r = await client.get(path, headers={"Origin": ORIGIN})
        else:
            r = await client.post(
                path,
                headers={"Origin": ORIGIN, "Authorization": f"Bearer {secret}"},
                json={"model": "buggy", "messages": [{"role": "user", "content": "hi"}]},
            )
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error" and r.json()["error"]["code"] == "internal_error"
    request_id = r.headers["x-request-id"]
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert _count(path, "500") == before + 1
    assert any(rec.exc_info and request_id in rec.getMessage() for rec in caplog.records)
    ACCESS_LOG.close()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert any(line["request_id"] == request_id and line["status"] == 500 for line in lines)


async def test_bug_after_work_is_billed_with_status_500(app: tuple[FastAPI, Platform]) -> None:
    application, platform = app
    secret = await _key(platform)
    async with _client(application) as client:
        r = await client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "buggy", "messages": [{"role": "user", "content": "hi"}]},
        )
    await platform.ledger.flush()
    rows = platform.ledger_repo.report(0, 2**62, "model")
    assert r.status_code == 500
    assert rows[0]["requests"] == 1 and rows[0]["failed_requests"] == 1 and rows[0]["input_tokens"] == 7


async def test_unexpected_error_mid_stream_is_an_error_event(
    app: tuple[FastAPI, Platform], caplog: pytest.LogCaptureFixture
) -> None:
    application, platform = app
    secret = await _key(platform)
    caplog.set_level(logging.ERROR)
    async with _client(application) as client:
        r = await client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "buggy", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
    events = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert '"Hi"' in events[0]
    assert orjson.loads(events[1][6:])["error"]["code"] == "internal_error"
    assert events[2] == "data: [DONE]"
    assert any(rec.exc_info and "mid-stream" in rec.getMessage() for rec in caplog.records)
    await platform.ledger.flush()
    row = platform.ledger_repo.report(0, 2**62, "model")[0]
    assert row["failed_requests"] == 1 and row["output_tokens"] == 1  # "Hi", estimated
