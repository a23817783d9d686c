"""The Responses tool loop with MCP tools, and state across turns with previous_response_id.

A real server, a stand-in upstream that calls tools (tests/support/responses_upstream.py), a real
MCP server on local sockets (tests/support/mcp_server.py, the official `mcp` package).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from tests.support.ledger import ledger_row, rows_where
from tests.support.mcp_server import McpTestServer
from tests.support.responses_upstream import ResponsesStandIn
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpTestServer]:
    s = McpTestServer().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stand_in() -> Iterator[ResponsesStandIn]:
    s = ResponsesStandIn().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def srv(
    stand_in: ResponsesStandIn, mcp_server: McpTestServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    catalog = "builtins = false\n"
    for model_id, upstream in (("r-mcp", "mcpcaller"), ("r-looper", "looper"), ("r-plain", "reasoner")):
        catalog += (
            f'\n[[models]]\nid = "{model_id}"\nbackend = "openai"\nbase_url = "{stand_in.base_url}"\n'
            f'upstream_model = "{upstream}"\ninput_price = 1.0\noutput_price = 2.0\n'
        )
    env = {
        "INFERGATE_MCP_ALLOWED_URLS": f"http://127.0.0.1:{mcp_server.http_port}/",
        "INFERGATE_MCP_MAX_STEPS": "3",
    }
    proc = ServerProcess(tmp_path_factory.mktemp("resp-loop"), catalog, env=env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(srv: ServerProcess) -> openai.OpenAI:
    return srv.openai_client("responses-loop")


def mcp_tool(server: McpTestServer) -> dict[str, Any]:
    return {
        "type": "mcp",
        "server_label": "facts",
        "server_url": server.http_url,
        "require_approval": "never",
    }


def strict(resp: Any) -> Response:
    return Response.model_validate(
        resp.model_dump(mode="json", by_alias=True, exclude_unset=True), strict=True
    )


def test_mcp_loop_calls_the_tool_and_answers(
    srv: ServerProcess, client: openai.OpenAI, mcp_server: McpTestServer, stand_in: ResponsesStandIn
) -> None:
    resp = client.responses.create(
        model="r-mcp", input="Capital of France?", tools=[mcp_tool(mcp_server)], store=False
    )
    strict(resp)
    assert resp.status == "completed"
    assert [i.type for i in resp.output] == ["mcp_list_tools", "mcp_call", "message"]
    listing, call, _ = resp.output
    assert listing.server_label == "facts" and {t.name for t in listing.tools} >= {"add", "lookup"}
    assert (
        call.name == "lookup"
        and call.output == "Paris"
        and call.error is None
        and call.server_label == "facts"
    )
    assert resp.output_text == "Tool said: Paris"
    assert ("lookup", {"key": "capital-of-france"}) in mcp_server.calls
    # the second model call saw the call and its result
    assert stand_in.requests[-1]["messages"][-2]["tool_calls"][0]["function"]["name"] == "lookup"
    assert stand_in.requests[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": "Paris",
    }
    raw = resp.model_dump()
    assert raw["usage"]["output_tokens_details"]["tool_output_tokens"] > 0
    # one ledger row for the two model calls, with both calls' tokens
    row = ledger_row(srv, resp._request_id)
    assert row["input_tokens"] == resp.usage.input_tokens and row["output_tokens"] == resp.usage.output_tokens
    assert len(rows_where(srv, f"request_id = '{resp._request_id}'")) == 1


def test_mcp_loop_streams_mcp_events(client: openai.OpenAI, mcp_server: McpTestServer) -> None:
    with client.responses.stream(
        model="r-mcp", input="Capital?", tools=[mcp_tool(mcp_server)], store=False
    ) as s:
        events = list(s)
        final = s.get_final_response()
    strict(final)
    types = [e.type for e in events]
    for kind in (
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
    ):
        assert kind in types, kind
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "mcp_list_tools"), (1, "mcp_call"), (2, "message")]


def test_mcp_loop_is_bounded(client: openai.OpenAI, mcp_server: McpTestServer) -> None:
    resp = client.responses.create(
        model="r-looper", input="Add forever", tools=[mcp_tool(mcp_server)], store=False
    )
    strict(resp)
    assert resp.status == "incomplete"
    assert [i.type for i in resp.output].count("mcp_call") == 3  # INFERGATE_MCP_MAX_STEPS


def test_mcp_url_outside_the_allow_list_is_refused(client: openai.OpenAI) -> None:
    tool = {
        "type": "mcp",
        "server_label": "x",
        "server_url": "http://127.0.0.1:9/mcp",
        "require_approval": "never",
    }
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="r-mcp", input="hi", tools=[tool], store=False)
    assert err.value.body["param"].startswith("tools")


def test_previous_response_id_replays_the_conversation(
    client: openai.OpenAI, stand_in: ResponsesStandIn, srv: ServerProcess
) -> None:
    first = client.responses.create(model="r-plain", input="My name is Ada.", instructions="Be kind.")
    strict(first)
    second = client.responses.create(model="r-plain", input="What is my name?", previous_response_id=first.id)
    strict(second)
    assert second.previous_response_id == first.id
    sent = stand_in.requests[-1]["messages"]
    assert sent == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "The answer is 4."},
        {"role": "user", "content": "What is my name?"},
    ]  # instructions are not carried over, as in OpenAI's API
    other = srv.openai_client("someone-else")
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.create(model="r-plain", input="hi", previous_response_id=first.id)
    assert err.value.body["param"] == "previous_response_id"
    stored = client.responses.retrieve(second.id)
    assert stored.output_text == second.output_text


def test_store_false_is_not_retrievable(client: openai.OpenAI) -> None:
    resp = client.responses.create(model="r-plain", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="r-plain", input="again", previous_response_id=resp.id)


def test_conversation_parameter_carries_state(client: openai.OpenAI, stand_in: ResponsesStandIn) -> None:
    conv = client.conversations.create(items=[{"role": "system", "content": "You are terse."}])
    first = client.responses.create(model="r-plain", input="My name is Ada.", conversation=conv.id)
    strict(first)
    assert first.conversation.id == conv.id
    second = client.responses.create(model="r-plain", input="What is my name?", conversation={"id": conv.id})
    strict(second)
    assert stand_in.requests[-1]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "The answer is 4."},
        {"role": "user", "content": "What is my name?"},
    ]
    items = client.conversations.items.list(conv.id, order="asc").data
    turn = ["message", "reasoning", "message"]  # input, then the reasoner's two output items
    assert [i.type for i in items] == ["message", *turn, *turn]
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model="r-plain", input="x", conversation=conv.id, previous_response_id=first.id
        )
    assert err.value.body["param"] == "conversation"
