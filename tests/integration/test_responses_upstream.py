"""POST /v1/responses on OpenAI-compatible upstreams (translated to chat) and a native one.

A real server process, the real openai and gradient SDKs, a local stand-in upstream
(tests/support/responses_upstream.py) for reasoning, tool calls, vision and native Responses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import gradient
import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support.ledger import ledger_row, rows_where
from tests.support.responses_upstream import ResponsesStandIn
from tests.support.server import ServerProcess

MODELS = [
    ("r-reasoner", "reasoner", ""),
    ("r-reasoner-alt", "reasoner-alt", ""),
    ("r-thinker", "thinker", ""),
    ("r-tools", "toolcaller", ""),
    ("r-vision", "vision", "vision = true\n"),
    ("r-blind", "vision", ""),
    ("r-cutoff", "cutoff", ""),
    ("r-native", "native", "responses_native = true\n"),
    ("r-native-nousage", "native-nousage", "responses_native = true\n"),
    ("r-broken", "broken", ""),
    ("r-slow", "slow", ""),
]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def stand_in() -> Iterator[ResponsesStandIn]:
    s = ResponsesStandIn().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def srv(stand_in: ResponsesStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    catalog = "builtins = false\n"
    for model_id, upstream, extra in MODELS:
        catalog += (
            f'\n[[models]]\nid = "{model_id}"\nbackend = "openai"\nbase_url = "{stand_in.base_url}"\n'
            f'upstream_model = "{upstream}"\ninput_price = 1.0\noutput_price = 2.0\n{extra}'
        )
    proc = ServerProcess(tmp_path_factory.mktemp("resp-up"), catalog).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(srv: ServerProcess) -> openai.OpenAI:
    return srv.openai_client("responses-upstream")


def strict(resp: Any) -> Response:
    """Every answer must parse as the SDK's Response type in strict mode."""
    data = (
        resp.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if not isinstance(resp, dict)
        else resp
    )
    return Response.model_validate(data, strict=True)


def test_reasoning_upstream_gives_reasoning_and_message_items(
    srv: ServerProcess, client: openai.OpenAI
) -> None:
    resp = client.responses.create(
        model="r-reasoner", input="What is 2+2?", max_output_tokens=50, temperature=0.7, store=False
    )
    strict(resp)
    assert resp.status == "completed" and resp.model == "r-reasoner"
    assert [i.type for i in resp.output] == ["reasoning", "message"]
    reasoning, message = resp.output
    assert reasoning.summary == [] and reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text == "The user asks 2+2. That is 4."
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert resp.output_text == "The answer is 4."
    assert resp.usage.output_tokens_details.reasoning_tokens == 7
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    raw = resp.model_dump()
    assert raw["usage"]["output_tokens_details"]["tool_output_tokens"] == 0
    assert raw["usage"]["input_tokens_details"]["cached_tokens"] == 0
    row = ledger_row(srv, resp._request_id)
    assert row["endpoint"] == "responses" and row["status"] == 200
    assert row["input_tokens"] == resp.usage.input_tokens and row["output_tokens"] == resp.usage.output_tokens


def test_reasoning_field_spelled_reasoning_and_effort_forwarded(
    client: openai.OpenAI, stand_in: ResponsesStandIn
) -> None:
    resp = client.responses.create(
        model="r-reasoner-alt", input="What is 2+2?", reasoning={"effort": "low"}, store=False
    )
    strict(resp)
    assert resp.output[0].type == "reasoning" and resp.output[0].content[0].text.endswith("4.")
    assert resp.reasoning.effort == "low"
    sent = stand_in.requests[-1]
    assert sent["reasoning_effort"] == "low" and sent["messages"][-1] == {
        "role": "user",
        "content": "What is 2+2?",
    }


def test_inline_think_becomes_a_reasoning_item(client: openai.OpenAI) -> None:
    for stream in (False, True):
        if stream:
            with client.responses.stream(model="r-thinker", input="2+2?", store=False) as s:
                resp = s.get_final_response()
        else:
            resp = client.responses.create(model="r-thinker", input="2+2?", store=False)
        strict(resp)
        assert [i.type for i in resp.output] == ["reasoning", "message"]
        assert resp.output[0].content[0].text == "Two plus two."
        assert resp.output_text == "It is 4."
        assert resp.usage.output_tokens_details.reasoning_tokens > 0


def test_stream_events_are_strict_and_numbered(srv: ServerProcess, client: openai.OpenAI) -> None:
    with client.responses.stream(model="r-reasoner", input="What is 2+2?", store=False) as stream:
        events = list(stream)
        final = stream.get_final_response()
    strict(final)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for kind in ("reasoning_text.delta", "reasoning_text.done", "output_text.delta", "output_text.done"):
        assert f"response.{kind}" in types
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.type) for e in added] == [(0, "reasoning"), (1, "message")]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all(e.output_index == 1 and e.item_id == final.output[1].id for e in deltas)
    assert final.output_text == "The answer is 4."
    row = ledger_row(srv, stream._response.headers["x-request-id"])
    assert row["output_tokens"] == final.usage.output_tokens


def test_function_tool_round_trip(client: openai.OpenAI, stand_in: ResponsesStandIn) -> None:
    first = client.responses.create(
        model="r-tools", input="Weather in Paris?", tools=[WEATHER_TOOL], store=False
    )
    strict(first)
    assert first.status == "completed"
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_standin1"
    assert call.id and json.loads(call.arguments) == {"city": "Paris"}
    assert stand_in.requests[-1]["tools"][0]["function"]["name"] == "get_weather"
    second = client.responses.create(
        model="r-tools",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[WEATHER_TOOL],
        store=False,
    )
    strict(second)
    assert second.output_text == "Tool said: sunny"
    sent = stand_in.requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_standin1"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_standin1", "content": "sunny"}


def test_function_call_arguments_stream(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="r-tools", input="Weather?", tools=[WEATHER_TOOL], store=False
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    strict(final)
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"city": "Paris"}'
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done[0].arguments == final.output[0].arguments


def test_images_go_to_vision_models_and_are_refused_by_others(
    client: openai.OpenAI, stand_in: ResponsesStandIn
) -> None:
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": PIXEL}]
    resp = client.responses.create(
        model="r-vision", input=[{"role": "user", "content": content}], store=False
    )
    strict(resp)
    assert resp.output_text == "I see 1 image(s)."
    part = stand_in.requests[-1]["messages"][0]["content"][1]
    assert part["type"] == "image_url" and part["image_url"]["url"] == PIXEL
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="r-blind", input=[{"role": "user", "content": content}], store=False)
    assert err.value.body["param"] == "input" and "does not accept images" in err.value.body["message"]


def test_cut_output_is_incomplete(client: openai.OpenAI) -> None:
    resp = client.responses.create(model="r-cutoff", input="Count", max_output_tokens=3, store=False)
    strict(resp)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output[0].status == "incomplete"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": 5}, "input"),
        ({"input": [{"type": "web_search_call"}]}, "input.0"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input.0.role"),
        ({"tools": [{"type": "function"}]}, "tools.0.name"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"truncation": "sometimes"}, "truncation"),
        ({"metadata": {"k": 5}}, "metadata.k"),
        ({"stream": "yes"}, "stream"),
        ({"model": "no-such-model"}, "model"),
        ({"background": True, "store": False}, "background"),
        ({"previous_response_id": "resp_x", "conversation": "conv_x"}, "conversation"),
        ({"previous_response_id": "resp_x", "conversation": {"id": "conv_x"}}, "conversation"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "get_weather"}}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "a b", "schema": {}}}}, "text.format.name"),
    ],
)
def test_bad_values_get_400_naming_the_field(srv: ServerProcess, body: dict[str, Any], param: str) -> None:
    key = srv.create_key("bad-values")["secret_key"]
    payload = {"model": "r-reasoner", "input": "hi", "store": False, **body}
    r = httpx.post(f"{srv.url}/v1/responses", json=payload, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param, r.text


def test_unknown_fields_are_ignored(client: openai.OpenAI) -> None:
    resp = client.responses.create(
        model="r-reasoner", input="2+2?", store=False, extra_body={"frobnicate": True, "service_tier": "flex"}
    )
    strict(resp)
    assert resp.status == "completed"


def test_native_upstream_passes_through_and_bills(
    srv: ServerProcess, client: openai.OpenAI, stand_in: ResponsesStandIn
) -> None:
    resp = client.responses.create(model="r-native", input="hello", store=False, instructions="Be brief.")
    strict(resp)
    assert resp.id.startswith("resp_") and resp.id != "resp_upstream" and resp.model == "r-native"
    assert resp.output_text == "Native answer to 1 item(s)."
    sent = stand_in.requests[-1]
    assert sent["model"] == "native" and sent["store"] is False and sent["instructions"] == "Be brief."
    assert resp.usage.input_tokens == 21 and resp.usage.input_tokens_details.cached_tokens == 3
    row = ledger_row(srv, resp._request_id)
    # the ledger keeps uncached input and cache reads apart
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (18, 6, 3)
    with client.responses.stream(model="r-native", input="hello", store=False) as stream:
        events = list(stream)
        final = stream.get_final_response()
    strict(final)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert all(
        e.response.id == final.id for e in events if e.type.startswith("response.") and hasattr(e, "response")
    )
    assert final.output_text == "Native answer to 1 item(s)."


def test_gradient_sdk_responses_create(srv: ServerProcess) -> None:
    key = srv.create_key("gradient-responses")["secret_key"]
    grad = gradient.Gradient(model_access_key=key, base_url=srv.url, max_retries=0)
    resp = grad.responses.create(
        model="r-reasoner", input="What is 2+2?", max_output_tokens=50, temperature=0.7
    )
    data = (
        resp.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if hasattr(resp, "model_dump")
        else resp
    )
    strict(data)
    assert data["output"][1]["content"][0]["text"] == "The answer is 4."


def test_failure_mid_stream_is_an_error_event_then_failed(srv: ServerProcess, client: openai.OpenAI) -> None:
    stream = client.responses.create(model="r-broken", input="hi", stream=True, store=False)
    events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-2:] == ["error", "response.failed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    error, failed = events[-2], events[-1]
    assert "broke mid-stream" in error.message
    resp = strict(failed.response.model_dump(mode="json", by_alias=True, exclude_unset=True))
    assert resp.status == "failed" and resp.error.code == "server_error"
    assert resp.output[0].type == "message" and resp.output[0].status == "incomplete"
    assert resp.output[0].content[0].text == "The answer"
    row = ledger_row(srv, stream.response.headers["x-request-id"])
    assert row["status"] == 502 and row["output_tokens"] > 0  # the prompt and what was streamed


def test_client_gone_mid_stream_is_billed_499(srv: ServerProcess, stand_in: ResponsesStandIn) -> None:
    key = srv.create_key("gone")["secret_key"]
    body = {"model": "r-slow", "input": "hi", "stream": True, "store": False}
    abandoned = stand_in.abandoned
    with httpx.stream(
        "POST", f"{srv.url}/v1/responses", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if "response.output_text.delta" in line:
                break  # leave once the answer started
    row = ledger_row(srv, request_id)
    assert row["endpoint"] == "responses" and row["status"] == 499 and row["estimated"]
    deadline = time.monotonic() + 10
    while stand_in.abandoned == abandoned and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stand_in.abandoned == abandoned + 1  # the upstream call was dropped at once


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("r-reasoner", {}),
        ("r-thinker", {}),
        ("r-tools", {"tools": [WEATHER_TOOL]}),
        ("r-cutoff", {"max_output_tokens": 3}),
    ],
)
def test_every_raw_event_validates_strictly(srv: ServerProcess, model: str, extra: dict[str, Any]) -> None:
    """The SDK's stream helper builds events leniently; here each raw SSE event must pass the SDK's
    event union in strict mode, named by its `event:` line."""
    key = srv.create_key("raw-events")["secret_key"]
    body = {"model": model, "input": "2+2?", "stream": True, "store": False, **extra}
    adapter = TypeAdapter(ResponseStreamEvent)
    events = []
    with httpx.stream(
        "POST", f"{srv.url}/v1/responses", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name
                adapter.validate_python(event, strict=True)
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    last = events[-1]
    assert last["type"] in ("response.completed", "response.incomplete")
    assert Response.model_validate(last["response"], strict=True).status == last["type"].split(".")[1]


def test_native_answers_are_stored_and_chained(client: openai.OpenAI, stand_in: ResponsesStandIn) -> None:
    first = client.responses.create(model="r-native", input="hello")
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(model="r-native", input="again", previous_response_id=first.id)
    strict(second)
    sent = stand_in.requests[-1]
    assert "previous_response_id" not in sent and sent["store"] is False
    # the whole conversation went as input: hello, the first answer, again
    assert [i.get("role") for i in sent["input"]] == ["user", "assistant", "user"]
    assert second.output_text == "Native answer to 3 item(s)."


def test_native_without_usage_is_counted_and_marked_estimated(
    srv: ServerProcess, client: openai.OpenAI
) -> None:
    resp = client.responses.create(model="r-native-nousage", input="hello there", store=False)
    strict(resp)
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    row = ledger_row(srv, resp._request_id)
    assert row["estimated"] and row["output_tokens"] == resp.usage.output_tokens


def test_client_gone_before_a_plain_answer_is_billed_499(
    srv: ServerProcess, stand_in: ResponsesStandIn
) -> None:
    made = srv.create_key("gone-plain")
    abandoned = stand_in.abandoned
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{srv.url}/v1/responses",
            json={"model": "r-slow", "input": "hi", "store": False},
            headers={"Authorization": f"Bearer {made['secret_key']}"},
            timeout=httpx.Timeout(10, read=1.0),
        )
    rows = rows_where(srv, f"key_uuid = '{made['uuid']}'")  # polls until the row is flushed
    assert [(r["endpoint"], r["status"]) for r in rows] == [("responses", 499)]
    deadline = time.monotonic() + 10
    while stand_in.abandoned == abandoned and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stand_in.abandoned == abandoned + 1  # the upstream call was dropped, not left running


def _post(srv: ServerProcess, key: str, **body: Any) -> httpx.Response:
    payload = {"model": "r-tools", "tools": [WEATHER_TOOL], **body}
    return httpx.post(f"{srv.url}/v1/responses", json=payload, headers={"Authorization": f"Bearer {key}"})


def _orphan_error(r: httpx.Response, call_id: str) -> None:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "input" and error["type"] == "invalid_request_error", error
    assert error["message"] == f"No tool call found for function call output with call_id {call_id}."


@pytest.mark.parametrize("mode", [{}, {"stream": True}, {"background": True}])
def test_function_call_output_without_its_call_is_400(
    srv: ServerProcess, stand_in: ResponsesStandIn, mode: dict[str, Any]
) -> None:
    """As OpenAI: an output must answer a call made before it; nothing is sent, billed or queued."""
    made = srv.create_key("orphan-output")
    key = made["secret_key"]
    sent = len(stand_in.requests)
    orphan = {"type": "function_call_output", "call_id": "call_nowhere", "output": "sunny"}
    r = _post(srv, key, input=[{"role": "user", "content": "Weather?"}, orphan], **mode)
    _orphan_error(r, "call_nowhere")
    call = {"type": "function_call", "call_id": "call_late", "name": "get_weather", "arguments": "{}"}
    late = {"type": "function_call_output", "call_id": "call_late", "output": "sunny"}
    _orphan_error(_post(srv, key, input=[late, call], **mode), "call_late")  # the output came first
    assert len(stand_in.requests) == sent
    ok = _post(srv, key, input=[call, late], store=False)  # the call first: served
    assert ok.status_code == 200 and ok.json()["output_text"] == "Tool said: sunny", ok.text
    rows = rows_where(srv, f"key_uuid = '{made['uuid']}'")  # polls until the served one is flushed
    assert [r["request_id"] for r in rows] == [ok.headers["x-request-id"]]  # the 400s billed nothing


def test_function_call_output_matches_calls_of_previous_response_and_conversation(
    srv: ServerProcess, client: openai.OpenAI
) -> None:
    first = client.responses.create(model="r-tools", input="Weather in Paris?", tools=[WEATHER_TOOL])
    (call,) = first.output
    answer = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    second = client.responses.create(
        model="r-tools", input=[answer], tools=[WEATHER_TOOL], previous_response_id=first.id, store=False
    )
    assert second.output_text == "Tool said: sunny"
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model="r-tools",
            input=[{**answer, "call_id": "call_other"}],
            tools=[WEATHER_TOOL],
            previous_response_id=first.id,
            store=False,
        )
    assert err.value.body["param"] == "input" and "call_id call_other." in err.value.body["message"]
    conv = client.conversations.create(
        items=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "call_conv", "name": "get_weather", "arguments": "{}"},
        ]
    )
    third = client.responses.create(
        model="r-tools",
        input=[{**answer, "call_id": "call_conv"}],
        tools=[WEATHER_TOOL],
        conversation=conv.id,
    )
    assert third.output_text == "Tool said: sunny"
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="r-tools", input=[answer], tools=[WEATHER_TOOL], conversation=conv.id)
    assert err.value.body["param"] == "input"


def test_stream_cut_by_max_output_tokens_ends_incomplete_not_completed(client: openai.OpenAI) -> None:
    """What the README says: the SDK's get_final_response() wants response.completed, so a cut
    stream's final response is the response.incomplete event's."""
    with client.responses.stream(model="r-cutoff", input="Count", max_output_tokens=3, store=False) as s:
        events = list(s)
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            s.get_final_response()
    last = events[-1]
    assert last.type == "response.incomplete"
    final = strict(last.response)
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text
