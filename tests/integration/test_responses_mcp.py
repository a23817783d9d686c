"""MCP tools in /v1/responses: the server lists and calls a real MCP server's tools in a loop.

A real infergate process; a real MCP server (the `mcp` package's own, tests/support/mcp_server.py)
over streamable HTTP and SSE; an OpenAI-compatible stand-in upstream that scripts the model's tool
calls (tests/support/responses_upstream.py: "mcpcaller" calls `lookup` then answers, "looper"
calls `add` forever), because a small local model picks tools too unreliably to test a loop.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from tests.support.ledger import ledger_row, rows_where
from tests.support.mcp_server import McpTestServer
from tests.support.responses_upstream import ResponsesStandIn
from tests.support.server import ServerProcess, free_port

MAX_STEPS = 3


def catalog(stand_in: ResponsesStandIn) -> str:
    text = "builtins = false\n"
    for model_id, upstream in (("m-mcp", "mcpcaller"), ("m-loop", "looper")):
        text += (
            f'\n[[models]]\nid = "{model_id}"\nbackend = "openai"\nbase_url = "{stand_in.base_url}"\n'
            f'upstream_model = "{upstream}"\ninput_price = 1.0\noutput_price = 2.0\n'
        )
    return text


def host_name_resolving_privately() -> str | None:
    """This machine's name: /etc/hosts maps it to a loopback or private address on Linux."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return None
    if any(ipaddress.ip_address(i[4][0].split("%")[0]).is_global for i in infos):
        return None
    return name


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpTestServer]:
    server = McpTestServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def broken_server() -> Iterator[McpTestServer]:
    server = McpTestServer(broken=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dead_port() -> int:
    """A port nobody listens on (listed in the allow-list: the server must answer 503, not hang)."""
    return free_port()


@pytest.fixture(scope="module")
def stand_in() -> Iterator[ResponsesStandIn]:
    s = ResponsesStandIn().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def srv(
    mcp_server: McpTestServer,
    broken_server: McpTestServer,
    dead_port: int,
    stand_in: ResponsesStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    allowed = [
        f"http://127.0.0.1:{mcp_server.http_port}/mcp",
        f"http://127.0.0.1:{mcp_server.sse_port}/sse",
        f"http://127.0.0.1:{broken_server.http_port}/",
        f"http://127.0.0.1:{dead_port}/",
    ]
    name = host_name_resolving_privately()
    if name:  # listed by name only: its private address must still be refused
        allowed.append(f"http://{name}:{mcp_server.http_port}/")
    env = {"INFERGATE_MCP_ALLOWED_URLS": ",".join(allowed), "INFERGATE_MCP_MAX_STEPS": str(MAX_STEPS)}
    proc = ServerProcess(tmp_path_factory.mktemp("resp-mcp"), catalog(stand_in), env=env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(srv: ServerProcess) -> openai.OpenAI:
    return srv.openai_client("responses-mcp")


def mcp_tool(url: str, **kw: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "facts", "server_url": url, "require_approval": "never", **kw}


def strict(resp: Any) -> Response:
    data = resp if isinstance(resp, dict) else resp.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return Response.model_validate(data, strict=True)


def requests_since(stand_in: ResponsesStandIn, before: int) -> list[dict[str, Any]]:
    return stand_in.requests[before:]


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_mcp_loop_lists_calls_and_answers(
    srv: ServerProcess,
    client: openai.OpenAI,
    mcp_server: McpTestServer,
    stand_in: ResponsesStandIn,
    transport: str,
) -> None:
    url = mcp_server.http_url if transport == "http" else mcp_server.sse_url
    before, headers_before = len(stand_in.requests), len(mcp_server.headers)
    resp = client.responses.create(
        model="m-mcp",
        input="What is the capital of France? Use the facts tool.",
        tools=[mcp_tool(url, allowed_tools=["lookup", "add"], headers={"X-Tenant": "acme"})],
    )
    strict(resp)
    assert resp.status == "completed"
    assert [i.type for i in resp.output] == ["mcp_list_tools", "mcp_call", "message"]
    listing, call, _message = resp.output
    assert listing.server_label == "facts" and listing.error is None
    assert sorted(t.name for t in listing.tools) == ["add", "lookup"]  # allowed_tools filtered
    assert call.server_label == "facts" and call.name == "lookup" and call.status == "completed"
    assert call.output == "Paris" and call.error is None and call.id.startswith("mcp_")
    assert resp.output_text == "Tool said: Paris"
    assert ("lookup", {"key": "capital-of-france"}) in mcp_server.calls
    # the client's headers reached the MCP server; they are not echoed back in the response
    seen = mcp_server.headers[headers_before:]
    assert seen and all(h.get("x-tenant") == "acme" for h in seen)
    assert "headers" not in resp.model_dump()["tools"][0] or not resp.model_dump()["tools"][0]["headers"]
    # two model calls: the tools offered as functions, then the tool's result fed back
    calls = requests_since(stand_in, before)
    assert len(calls) == 2
    assert sorted(t["function"]["name"] for t in calls[0]["tools"]) == ["add", "lookup"]
    assert calls[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": calls[1]["messages"][-1]["tool_call_id"],
        "content": "Paris",
    }
    # one ledger row for the whole loop, with both model calls' tokens
    row = ledger_row(srv, resp._request_id)
    assert row["endpoint"] == "responses" and row["status"] == 200
    assert resp.usage is not None
    assert row["input_tokens"] == resp.usage.input_tokens and row["output_tokens"] == resp.usage.output_tokens
    assert resp.usage.input_tokens >= 2 * 10  # each stand-in call counts at least 10 prompt tokens


def test_mcp_loop_streams_the_mcp_events(
    srv: ServerProcess, client: openai.OpenAI, mcp_server: McpTestServer
) -> None:
    with client.responses.stream(
        model="m-mcp", input="Capital of France?", tools=[mcp_tool(mcp_server.http_url)], store=False
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    strict(final)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    listing = types.index("response.mcp_list_tools.in_progress")
    assert types[listing - 1 : listing + 3] == [
        "response.output_item.added",
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.output_item.done",
    ]
    call_events = [e for e in events if e.type.startswith("response.mcp_call")]
    assert [e.type for e in call_events] == [
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
    ]
    assert {e.output_index for e in call_events} == {1}
    assert (
        "".join(e.delta for e in call_events if e.type.endswith(".delta")) == '{"key": "capital-of-france"}'
    )
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [(e.output_index, e.item.type) for e in done] == [
        (0, "mcp_list_tools"),
        (1, "mcp_call"),
        (2, "message"),
    ]
    assert done[1].item.output == "Paris"
    assert [i.type for i in final.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert final.output_text == "Tool said: Paris"


def test_loop_past_the_bound_is_incomplete_and_billed_once(
    srv: ServerProcess, client: openai.OpenAI, mcp_server: McpTestServer, stand_in: ResponsesStandIn
) -> None:
    before = len(stand_in.requests)
    resp = client.responses.create(model="m-loop", input="Add forever.", tools=[mcp_tool(mcp_server.sse_url)])
    strict(resp)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    kinds = [i.type for i in resp.output]
    assert kinds == ["mcp_list_tools"] + ["mcp_call"] * MAX_STEPS
    assert all(i.output == "3" and i.name == "add" for i in resp.output[1:])
    assert len(requests_since(stand_in, before)) == MAX_STEPS  # the bound is on model calls
    row = ledger_row(srv, resp._request_id)
    assert row["endpoint"] == "responses" and row["output_tokens"] == resp.usage.output_tokens  # type: ignore[union-attr]


def test_a_failing_tool_is_an_error_in_the_item_not_a_failed_response(
    srv: ServerProcess, client: openai.OpenAI, broken_server: McpTestServer, stand_in: ResponsesStandIn
) -> None:
    before = len(stand_in.requests)
    resp = client.responses.create(
        model="m-mcp", input="Capital?", tools=[mcp_tool(broken_server.http_url)], store=False
    )
    strict(resp)
    assert resp.status == "completed"
    assert [i.type for i in resp.output] == ["mcp_list_tools", "mcp_call", "message"]
    call = resp.output[1]
    assert call.status == "failed" and call.output is None and call.error is not None
    assert call.error.type == "mcp_tool_execution_error"
    # the model was told about the failure, and answered
    fed_back = requests_since(stand_in, before)[-1]["messages"][-1]
    assert fed_back["role"] == "tool" and "rror" in fed_back["content"]
    assert ledger_row(srv, resp._request_id)["status"] == 200


def test_a_model_that_names_no_offered_tool_answers_at_once(
    client: openai.OpenAI, mcp_server: McpTestServer
) -> None:
    resp = client.responses.create(
        model="m-mcp",
        input="Capital?",
        tools=[mcp_tool(mcp_server.http_url, allowed_tools=["add"])],
        store=False,
    )
    strict(resp)  # the scripted model calls only `lookup`, which allowed_tools left out
    assert [i.type for i in resp.output] == ["mcp_list_tools", "message"]
    assert [t.name for t in resp.output[0].tools] == ["add"]


def refused(srv: ServerProcess, key: str, tools: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/responses",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "m-mcp", "input": "hi", "tools": tools},
        timeout=60,
    )


def test_allow_list_and_private_address_refusals(
    srv: ServerProcess, mcp_server: McpTestServer, stand_in: ResponsesStandIn
) -> None:
    key = srv.create_key("mcp-refusals")["secret_key"]
    before_calls, before_headers = len(stand_in.requests), len(mcp_server.headers)
    cases = [
        (mcp_tool("https://mcp.example.com/mcp"), "not allowed"),  # not in the allow-list
        (mcp_tool(f"http://localhost:{mcp_server.http_port}/mcp"), "not allowed"),  # listed by IP only
        (mcp_tool(f"http://127.0.0.1:{mcp_server.http_port}/other"), "not allowed"),  # outside the path
        (mcp_tool(mcp_server.http_url, require_approval="always"), "'never'"),
        (mcp_tool(mcp_server.http_url, server_label=""), "server_label"),
    ]
    name = host_name_resolving_privately()
    if name:
        cases.append((mcp_tool(f"http://{name}:{mcp_server.http_port}/mcp"), "private"))
    for tool, words in cases:
        r = refused(srv, key, [{"type": "function", "name": "f"}, tool])
        assert r.status_code == 400, (tool, r.text)
        error = r.json()["error"]
        field = (
            "require_approval"
            if words == "'never'"
            else "server_label"
            if words == "server_label"
            else "server_url"
        )
        assert error["param"] in (f"tools[1].{field}", f"tools.1.{field}", f"tools.1.mcp.{field}"), error
        assert words in error["message"] and error["type"] == "invalid_request_error"
        assert rows_where(srv, f"request_id = '{r.headers['x-request-id']}'", timeout=0.3) == []  # not billed
    assert len(stand_in.requests) == before_calls  # no model call
    assert len(mcp_server.headers) == before_headers  # and nothing sent to the MCP server


def test_unreachable_mcp_server_is_a_clear_error(srv: ServerProcess, dead_port: int) -> None:
    key = srv.create_key("mcp-down")["secret_key"]
    r = refused(srv, key, [mcp_tool(f"http://127.0.0.1:{dead_port}/mcp")])
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["param"] == "tools[0].server_url" and "'facts'" in error["message"]
    assert rows_where(srv, f"request_id = '{r.headers['x-request-id']}'", timeout=0.3) == []


def test_without_an_allow_list_mcp_tools_get_a_400_that_says_how(
    stand_in: ResponsesStandIn, mcp_server: McpTestServer, tmp_path: Path
) -> None:
    proc = ServerProcess(tmp_path / "srv", catalog(stand_in), env={"INFERGATE_MCP_ALLOWED_URLS": ""}).start()
    try:
        key = proc.create_key("no-mcp")["secret_key"]
        r = refused(proc, key, [mcp_tool(mcp_server.http_url)])
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["param"] == "tools[0].server_url"
        assert "INFERGATE_MCP_ALLOWED_URLS" in error["message"] and "disabled" in error["message"]
    finally:
        proc.stop()


def test_bad_allow_list_stops_the_start(tmp_path: Path, stand_in: ResponsesStandIn) -> None:
    proc = ServerProcess(
        tmp_path / "bad", catalog(stand_in), env={"INFERGATE_MCP_ALLOWED_URLS": "mcp.example.com"}
    )
    result = proc.cli("serve", "--port", str(proc.port), check=False)
    assert result.returncode == 2 and "INFERGATE_MCP_ALLOWED_URLS" in result.stderr


def test_previous_response_id_replays_the_mcp_items(
    client: openai.OpenAI, mcp_server: McpTestServer, stand_in: ResponsesStandIn
) -> None:
    first = client.responses.create(
        model="m-mcp", input="Capital of France?", tools=[mcp_tool(mcp_server.http_url)]
    )
    assert [i.type for i in first.output] == ["mcp_list_tools", "mcp_call", "message"]
    stored = client.responses.retrieve(first.id)
    strict(stored)
    assert [i.type for i in stored.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert stored.output[1].output == "Paris"  # type: ignore[union-attr]
    before = len(stand_in.requests)
    second = client.responses.create(
        model="m-mcp", input="Thanks!", previous_response_id=first.id, store=False
    )
    strict(second)
    messages = requests_since(stand_in, before)[0]["messages"]
    calls = [m for m in messages if m["role"] == "assistant" and m.get("tool_calls")]
    assert calls and calls[0]["tool_calls"][0]["function"]["name"] == "lookup"
    results = [m for m in messages if m["role"] == "tool"]
    assert results and results[0]["content"] == "Paris"
    assert messages[-1] == {"role": "user", "content": "Thanks!"}
