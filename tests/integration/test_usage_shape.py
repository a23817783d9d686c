"""One usage rule on every backend, through the real server and the stand-in upstream.

A request without cache_control gets OpenAI's shape (prompt_tokens = every prompt token, reuse in
prompt_tokens_details.cached_tokens), whatever style the upstream answered in; a request with
cache_control gets the seed's fields. (The embedded engine's side: test_prompt_cache.py.)
An upstream usage whose details are not objects is served with its counts; one whose counts are
unusable is served and estimated.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream, usage_for

HI = [{"role": "user", "content": "hi"}]
CACHED = [
    {
        "role": "system",
        "content": [{"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}],
    },
    {"role": "user", "content": "hi"},
]
SEED_FIELDS = {"cache_created_input_tokens", "cache_creation", "cache_read_input_tokens"}


def upstream_prompt_tokens(upstream: StandInUpstream) -> int:
    """The prompt_tokens the stand-in reported for the last request it received."""
    return usage_for(upstream.requests[-1], 0)["prompt_tokens"]


def chat(server: ServerProcess, key: str, model: str, messages: list[dict[str, Any]], stream: bool) -> dict:
    """The answer's usage, from the JSON answer or the streamed usage chunk."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    r = httpx.post(
        f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=30
    )
    assert r.status_code == 200, r.text
    if not stream:
        assert r.json()["choices"][0]["message"]["content"]
        return r.json()["usage"]
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks), chunks
    (last,) = [c for c in chunks if c.get("usage")]
    return last["usage"]


def ledger(server: ServerProcess, model: str) -> dict[str, int]:
    r = httpx.get(f"{server.url}/v2/gen-ai/usage", params={"group_by": "model"}, headers=server.admin())
    assert r.status_code == 200, r.text
    rows = [row for row in r.json()["usage"] if row["group"] == model]
    return (
        rows[0]
        if rows
        else {"requests": 0, "estimated_requests": 0, "cache_read_tokens": 0, "input_tokens": 0}
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("model", "read"), [("standin-cached", 8), ("standin-anthropic-cache", 30)], ids=["openai", "anthropic"]
)
def test_without_cache_control_usage_is_openais_shape_whatever_the_upstream_style(
    server: ServerProcess, key: str, upstream: StandInUpstream, model: str, read: int, stream: bool
) -> None:
    before = ledger(server, model)
    usage = chat(server, key, model, HI, stream)
    assert not SEED_FIELDS & set(usage), usage
    assert usage["prompt_tokens_details"]["cached_tokens"] == read
    uncached = usage["prompt_tokens"] - read
    # llama.cpp's and OpenAI's style count cached tokens inside prompt_tokens; Anthropic's adds them
    expected = upstream_prompt_tokens(upstream) + (read if model == "standin-anthropic-cache" else 0)
    assert usage["prompt_tokens"] == expected
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    after = ledger(server, model)
    assert after["requests"] == before["requests"] + 1
    assert after["cache_read_tokens"] - before["cache_read_tokens"] == read  # billed as reads
    assert after["input_tokens"] - before["input_tokens"] == uncached
    assert after["estimated_requests"] == before["estimated_requests"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("model", "read"), [("standin-cached", 8), ("standin-anthropic-cache", 30)], ids=["openai", "anthropic"]
)
def test_with_cache_control_usage_is_the_seeds_shape_whatever_the_upstream_style(
    server: ServerProcess, key: str, upstream: StandInUpstream, model: str, read: int, stream: bool
) -> None:
    usage = chat(server, key, model, CACHED, stream)
    assert set(usage) >= SEED_FIELDS and "prompt_tokens_details" not in usage, usage
    assert usage["cache_read_input_tokens"] == read and usage["cache_created_input_tokens"] == 0
    # the seed's prompt_tokens is the uncached rest; the upstream saw the same messages either way
    whole = upstream_prompt_tokens(upstream) + (read if model == "standin-anthropic-cache" else 0)
    assert usage["prompt_tokens"] == whole - read


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_usage_details_that_are_not_objects_are_ignored(
    server: ServerProcess, key: str, upstream: StandInUpstream, stream: bool
) -> None:
    before = ledger(server, "standin-bad-details")
    usage = chat(server, key, "standin-bad-details", HI, stream)
    assert usage["prompt_tokens"] == upstream_prompt_tokens(upstream)  # the upstream's own counts, kept
    assert "prompt_tokens_details" not in usage and "completion_tokens_details" not in usage
    after = ledger(server, "standin-bad-details")
    assert after["requests"] == before["requests"] + 1
    assert after["estimated_requests"] == before["estimated_requests"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_unusable_upstream_usage_is_served_and_estimated(
    server: ServerProcess, key: str, stream: bool
) -> None:
    before = ledger(server, "standin-bad-usage")
    usage = chat(server, key, "standin-bad-usage", HI, stream)
    assert isinstance(usage["prompt_tokens"], int) and usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0  # counted from the answer's text, not the upstream's -1
    after = ledger(server, "standin-bad-usage")
    assert after["requests"] == before["requests"] + 1
    assert after["estimated_requests"] == before["estimated_requests"] + 1
