"""Chat through an OpenAI-compatible upstream: forwarding, errors, timeouts, disconnects."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream


def post(server: ServerProcess, key: str, body: dict, **kw: object) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=body,
        timeout=30,
        **kw,
    )


def test_every_parameter_is_forwarded(server: ServerProcess, key: str, upstream: StandInUpstream) -> None:
    body = {
        "model": "standin",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
        "temperature": 0.5,
        "max_tokens": 3,
        "max_completion_tokens": 3,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "seed": 7,
        "n": 2,
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
            }
        ],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 2,
        "user": "u-1",
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logit_bias": {"42": 1.0},
        "parallel_tool_calls": False,
        "some_vendor_extension": {"x": 1},
    }
    r = post(server, key, body)
    assert r.status_code == 200, r.text
    sent = upstream.requests[-1]
    assert sent["model"] == "standin"  # the upstream's name for the model
    for field, value in body.items():
        if field != "model":
            assert sent[field] == value, field
    assert len(r.json()["choices"]) == 2
    assert upstream.headers[-1].get("Authorization") is None  # no api_key_env: nothing leaks upstream


def test_client_key_is_never_forwarded(server: ServerProcess, key: str, upstream: StandInUpstream) -> None:
    post(server, key, {"model": "standin", "messages": [{"role": "user", "content": "hi"}]})
    assert key not in str(upstream.headers[-1])


@pytest.mark.parametrize(
    ("model", "status", "fragment"),
    [
        ("standin-fail-500", 502, "stand-in failure 500"),
        ("standin-fail-401", 502, "stand-in failure 401"),
        ("standin-fail-503", 503, "stand-in failure 503"),
        ("standin-fail-429", 429, "stand-in failure 429"),
        ("standin-fail-400", 400, "stand-in failure 400"),
        ("standin-badjson", 502, "upstream standin-badjson answered"),
        ("standin-down", 503, "unreachable"),
        ("standin-slow", 504, "did not answer within 1s"),
    ],
)
def test_upstream_failures_are_clear_errors(
    server: ServerProcess, key: str, model: str, status: int, fragment: str
) -> None:
    for stream in (False, True):
        r = post(
            server, key, {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert fragment in error["message"] and set(error) == {"message", "type", "param", "code"}
        if status in (429, 503):
            assert r.headers.get("retry-after")


def test_error_after_stream_started_is_an_sse_error_event(server: ServerProcess, key: str) -> None:
    r = post(
        server,
        key,
        {"model": "standin-midstream-error", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert '"error"' in events[-2] and "stand-in broke mid-stream" in events[-2]


def _send_and_vanish(server: ServerProcess, key: str, body: bytes, upstream: StandInUpstream) -> None:
    """Send a request, wait until the upstream has it (the gateway waits on the upstream), hang up."""
    received = len(upstream.requests)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        deadline = time.monotonic() + 10
        while len(upstream.requests) == received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(upstream.requests) > received, "the upstream never got the request"


def test_disconnect_cancels_upstream_stream(
    server: ServerProcess, key: str, upstream: StandInUpstream
) -> None:
    before = upstream.abandoned
    _send_and_vanish(
        server,
        key,
        b'{"model":"standin-slowstream","stream":true,"messages":[{"role":"user","content":"hi"}]}',
        upstream,
    )
    deadline = time.time() + 5
    while upstream.abandoned == before and time.time() < deadline:
        time.sleep(0.05)
    assert upstream.abandoned == before + 1  # the gateway dropped its upstream request


def test_disconnect_cancels_non_stream_request(
    server: ServerProcess, key: str, upstream: StandInUpstream
) -> None:
    _send_and_vanish(
        server, key, b'{"model":"standin-slow-ok","messages":[{"role":"user","content":"hi"}]}', upstream
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if '"status":499' in server.log():
            break
        time.sleep(0.05)
    assert '"status":499' in server.log()  # logged as client-closed, well before the upstream's 2 s


def test_cached_tokens_are_mapped(server: ServerProcess, key: str) -> None:
    usage = post(
        server, key, {"model": "standin-cached", "messages": [{"role": "user", "content": "hi"}]}
    ).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 8
    usage = post(
        server, key, {"model": "standin-anthropic-cache", "messages": [{"role": "user", "content": "hi"}]}
    ).json()["usage"]
    # no cache_control in the request: OpenAI's shape, whatever the upstream's style (test_usage_shape.py)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 30 and "cache_read_input_tokens" not in usage


def test_unprefixed_routes(server: ServerProcess, key: str) -> None:
    r = httpx.post(
        f"{server.url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "standin", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200
    assert httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


CACHED_SYSTEM = {
    "role": "system",
    "content": {"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
}


def test_cache_control_reaches_only_upstreams_that_understand_it(
    server: ServerProcess, key: str, upstream: StandInUpstream
) -> None:
    messages = [CACHED_SYSTEM, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    r = post(server, key, {"model": "standin", "messages": messages})
    assert r.status_code == 200
    sent = upstream.requests[-1]["messages"]
    assert sent[0]["content"] == [{"type": "text", "text": "Long rules."}]  # stripped: it may be rejected
    assert sent[1]["content"] == [{"type": "text", "text": "hi"}]
    usage = r.json()["usage"]  # the client asked for caching: the seed's fields, nothing cached
    assert usage["cache_created_input_tokens"] == usage["cache_read_input_tokens"] == 0

    assert post(server, key, {"model": "standin-cache-aware", "messages": messages}).status_code == 200
    assert upstream.requests[-1]["messages"][0] == CACHED_SYSTEM  # forwarded untouched


def test_upstream_cache_tokens_are_billed_at_cache_prices(fresh_server: ServerProcess) -> None:
    server = fresh_server.start()
    secret = server.create_key("cache-bill")["secret_key"]
    body = {
        "model": "standin-anthropic-cache-write",
        "messages": [CACHED_SYSTEM, {"role": "user", "content": "hi"}],
    }
    usage = post(server, secret, body).json()["usage"]
    assert usage["cache_creation"] == {"ephemeral_5m_input_tokens": 25, "ephemeral_1h_input_tokens": 15}
    assert usage["cache_created_input_tokens"] == 40 and usage["cache_read_input_tokens"] == 30
    r = httpx.get(f"{server.url}/v2/gen-ai/usage", params={"group_by": "model"}, headers=server.admin())
    (row,) = r.json()["usage"]
    assert (row["input_tokens"], row["cache_read_tokens"]) == (usage["prompt_tokens"], 30)
    assert (row["cache_write_5m_tokens"], row["cache_write_1h_tokens"]) == (25, 15)
    # $1 input, $2 output per 1M: 1.25x / 2x for 5m / 1h writes, 0.1x for reads (nano-USD per token)
    expected = (
        usage["prompt_tokens"] * 1000 + usage["completion_tokens"] * 2000 + 25 * 1250 + 15 * 2000 + 30 * 100
    )
    assert row["cost_nano_usd"] == expected
