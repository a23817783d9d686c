"""Every path that consumed tokens is billed once, with its real status (metering.py).

Upstream paths use the stand-in upstream; embedded paths the real SmolLM2 model. Each test reads
the request's own ledger row from the server's SQLite database by its x-request-id.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import upstream_catalog
from tests.support.ledger import ledger_row, rows_where
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

EXTRA_MODELS = """
[[models]]
id = "standin-stall-midstream"
backend = "openai"
base_url = "{base}"
upstream_model = "slowstream"
timeout = 1.0
input_price = 1.0
output_price = 2.0
"""
STALLED_MODEL = """
[[models]]
id = "standin-no-accept"
backend = "openai"
base_url = "http://127.0.0.1:{port}/v1"
connect_timeout = 0.5
"""
PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and the sea."}]


def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def full_backlog() -> Iterator[int]:
    """A port that never completes a connection: a listener that accepts nothing, its queue full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # Linux queues backlog + 1; later handshakes go unanswered
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in [*fillers, listener]:
        s.close()


@pytest.fixture(scope="module")
def metered(
    upstream: StandInUpstream, full_backlog: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    catalog = (
        upstream_catalog(upstream.base_url)
        + EXTRA_MODELS.format(base=upstream.base_url)
        + STALLED_MODEL.format(port=full_backlog)
    )
    proc = ServerProcess(tmp_path_factory.mktemp("metered"), catalog).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def auth(metered: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {metered.create_key('metering')['secret_key']}"}


def post(
    server: ServerProcess, auth: dict[str, str], body: dict[str, Any], timeout: float = 30
) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=auth, timeout=timeout)


def test_upstream_timeout_after_part_of_a_stream_bills_what_was_seen(
    metered: ServerProcess, auth: dict[str, str]
) -> None:
    body = {"model": "standin-stall-midstream", "messages": PROMPT, "stream": True}
    with httpx.stream("POST", f"{metered.url}/v1/chat/completions", json=body, headers=auth, timeout=30) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert '"upstream_timeout"' in events[-2] and events[-1] == "data: [DONE]"
    row = ledger_row(metered, request_id)
    assert row["status"] == 504
    assert row["estimated"] == 1
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["cost_nano_usd"] == row["input_tokens"] * 1000 + row["output_tokens"] * 2000


def test_upstream_error_after_tokens_bills_them_as_502(metered: ServerProcess, auth: dict[str, str]) -> None:
    body = {"model": "standin-midstream-error", "messages": PROMPT, "stream": True}
    with httpx.stream("POST", f"{metered.url}/v1/chat/completions", json=body, headers=auth) as r:
        request_id = r.headers["x-request-id"]
        text = r.read().decode()
    assert "stand-in broke mid-stream" in text
    row = ledger_row(metered, request_id)
    assert (row["status"], row["estimated"]) == (502, 1)
    assert row["input_tokens"] > 0 and row["output_tokens"] == 2  # "Paris", " is"


def test_client_gone_mid_stream_is_billed_499(metered: ServerProcess, auth: dict[str, str]) -> None:
    body = {"model": "standin-slowstream", "messages": PROMPT, "stream": True}
    with httpx.stream("POST", f"{metered.url}/v1/chat/completions", json=body, headers=auth) as r:
        request_id = r.headers["x-request-id"]
        seen = 0
        for line in r.iter_lines():
            seen += " w" in line
            if seen == 3:
                break  # leaving the block closes the connection mid-stream
    row = ledger_row(metered, request_id)
    assert (row["status"], row["estimated"]) == (499, 1)
    assert row["input_tokens"] > 0 and row["output_tokens"] >= 3


def test_client_gone_while_upstream_works_is_billed_499(
    metered: ServerProcess, auth: dict[str, str], upstream: StandInUpstream
) -> None:
    before = len(upstream.requests)
    with pytest.raises(httpx.ReadTimeout):
        # the stand-in's "slow" model waits 2 s: the client gives up once the upstream has the request
        post(metered, auth, {"model": "standin-slow-ok", "messages": PROMPT}, timeout=1.0)
    wait_for(lambda: len(upstream.requests) > before)
    rows = rows_where(metered, "model = 'standin-slow-ok' AND status = 499")
    assert len(rows) == 1
    assert rows[0]["input_tokens"] > 0 and rows[0]["estimated"] == 1


def test_non_streamed_upstream_timeout_bills_the_prompt(metered: ServerProcess, auth: dict[str, str]) -> None:
    r = post(metered, auth, {"model": "standin-slow", "messages": PROMPT})
    assert r.status_code == 504
    row = ledger_row(metered, r.headers["x-request-id"])
    assert row["status"] == 504 and row["estimated"] == 1
    assert row["input_tokens"] > 0 and row["output_tokens"] == 0


def test_refused_requests_bill_nothing(metered: ServerProcess, auth: dict[str, str]) -> None:
    refused = [("standin-fail-400", 400), ("standin-fail-429", 429), ("standin-down", 503)]
    refused.append(("standin-no-accept", 503))  # a connect timeout: unreachable, not a 504
    for model, status in refused:
        r = post(metered, auth, {"model": model, "messages": PROMPT})
        assert r.status_code == status
        row = ledger_row(metered, r.headers["x-request-id"])
        assert row["status"] == status
        assert (row["input_tokens"], row["output_tokens"], row["cost_nano_usd"]) == (0, 0, 0)


# -- the embedded model: live usage from the engine ----------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data: Path = tmp_path_factory.mktemp("embedded-metering")
    proc = ServerProcess(data).start()
    yield proc
    proc.stop()


LONG = [
    {
        "role": "system",
        "content": [
            {
                "type": "text",
                "text": "You are a storyteller. " + "Every story is long and detailed. " * 40,
                "cache_control": {"type": "ephemeral", "ttl": "5m"},
            }
        ],
    },
    {"role": "user", "content": "Tell me a very long story about the sea."},
]


def test_embedded_client_gone_mid_stream_bills_prompt_cache_write_and_output(embedded: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {embedded.create_key('gone')['secret_key']}"}
    body = {"model": "smollm2-135m-instruct", "messages": LONG, "stream": True, "max_tokens": 400}
    with httpx.stream(
        "POST", f"{embedded.url}/v1/chat/completions", json=body, headers=auth, timeout=60
    ) as r:
        request_id = r.headers["x-request-id"]
        seen = 0
        for line in r.iter_lines():
            seen += '"content":"' in line.replace(" ", "")
            if seen >= 6:
                break
    row = ledger_row(embedded, request_id)
    assert row["status"] == 499 and row["estimated"] == 0
    assert row["cache_write_5m_tokens"] > 100  # written before the cut: kept
    assert row["input_tokens"] > 0 and row["output_tokens"] >= 5


def test_embedded_client_gone_mid_generation_bills_what_ran(embedded: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {embedded.create_key('gone2')['secret_key']}"}
    body = {"model": "smollm2-135m-instruct", "messages": PROMPT, "max_tokens": 2000, "temperature": 0.9}
    with pytest.raises(httpx.ReadTimeout):  # 2,000 tokens take > 10 s here: cut mid-generation
        post(embedded, auth, body, timeout=3.0)
    rows = rows_where(embedded, "status = 499 AND cache_write_5m_tokens = 0")
    assert len(rows) == 1
    assert rows[0]["estimated"] == 0
    assert rows[0]["input_tokens"] > 10 and rows[0]["output_tokens"] > 0


def test_input_token_metric_counts_uncached_input_as_the_ledger(
    metered: ServerProcess, auth: dict[str, str]
) -> None:
    from tests.integration.test_observability import scrape, value

    labels = {"model": "standin-cached"}
    before = scrape(metered)
    r = post(metered, auth, {"model": "standin-cached", "messages": PROMPT})
    usage = r.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 8
    row = ledger_row(metered, r.headers["x-request-id"])
    after = scrape(metered)
    delta = {
        kind: value(after, "infergate_tokens_total", **labels, type=kind)
        - value(before, "infergate_tokens_total", **labels, type=kind)
        for kind in ("input", "cache_read", "output")
    }
    assert delta == {
        "input": usage["prompt_tokens"] - 8,
        "cache_read": 8,
        "output": usage["completion_tokens"],
    }
    assert row["input_tokens"] == delta["input"]
