"""McpToolset against a real local MCP server (the `mcp` package's own server) over both transports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from openai.types.responses.response_output_item import McpCall, McpListTools

from infergate.errors import InvalidRequest, Unavailable, UpstreamError
from infergate.responses.mcp import McpSettings, McpToolset, call_output_text
from infergate.responses.mcp_guard import parse_allow_list
from tests.support.mcp_server import McpTestServer


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpTestServer]:
    server = McpTestServer().start()
    yield server
    server.stop()


def settings_for(server: McpTestServer, **kw: Any) -> McpSettings:
    allow = f"http://127.0.0.1:{server.http_port}/,http://127.0.0.1:{server.sse_port}/"
    return McpSettings(allowed_urls=parse_allow_list(allow), **kw)


def mcp_tool(url: str, label: str = "tools", **kw: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": label, "server_url": url, "require_approval": "never", **kw}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_lists_and_calls_tools(mcp_server: McpTestServer, transport: str) -> None:
    url = mcp_server.http_url if transport == "http" else mcp_server.sse_url

    async def scenario() -> tuple[Any, ...]:
        toolset = await McpToolset.open([mcp_tool(url)], settings_for(mcp_server))
        assert toolset is not None
        try:
            add = await toolset.call("add", json.dumps({"a": 2, "b": 40}))
            lookup = await toolset.call("lookup", '{"key": "capital-of-france"}')
            return (
                toolset.list_items,
                toolset.chat_tools(),
                add,
                lookup,
                toolset.owns("add"),
                toolset.owns("x"),
            )
        finally:
            await toolset.close()

    items, chat_tools, add, lookup, owns_add, owns_x = run(scenario())
    assert len(items) == 1
    listing = McpListTools.model_validate(items[0])
    assert listing.id.startswith("mcpl_") and listing.server_label == "tools" and listing.error is None
    names = {t.name for t in listing.tools}
    assert names == {"add", "lookup", "fail", "slow"}
    schema = next(t for t in listing.tools if t.name == "add").input_schema
    assert set(schema["properties"]) == {"a", "b"}  # type: ignore[index]
    assert next(t for t in listing.tools if t.name == "lookup").annotations == {"readOnlyHint": True}
    assert {t["function"]["name"] for t in chat_tools} == names
    assert all(t["type"] == "function" and "parameters" in t["function"] for t in chat_tools)
    call = McpCall.model_validate(add)
    assert call.id.startswith("mcp_") and call.output == "42" and call.error is None
    assert call.status == "completed" and call.server_label == "tools" and call.name == "add"
    assert json.loads(call.arguments) == {"a": 2, "b": 40}
    assert lookup["output"] == "Paris"
    assert owns_add and not owns_x


def test_allowed_tools_filter_and_read_only(mcp_server: McpTestServer) -> None:
    async def names(allowed_tools: Any) -> set[str]:
        tool = mcp_tool(mcp_server.http_url, allowed_tools=allowed_tools)
        toolset = await McpToolset.open([tool], settings_for(mcp_server))
        assert toolset is not None
        await toolset.close()
        assert {t["name"] for t in toolset.list_items[0]["tools"]} == {
            t["function"]["name"] for t in toolset.chat_tools()
        }
        return {t["name"] for t in toolset.list_items[0]["tools"]}

    assert run(names(["add", "nope"])) == {"add"}
    assert run(names({"tool_names": ["add", "lookup"]})) == {"add", "lookup"}
    assert run(names({"read_only": True})) == {"lookup"}
    assert run(names([])) == set()


def test_failing_tools_are_errors_in_the_item(mcp_server: McpTestServer) -> None:
    async def scenario() -> list[dict[str, Any]]:
        toolset = await McpToolset.open(
            [mcp_tool(mcp_server.http_url)], settings_for(mcp_server, call_timeout=0.5)
        )
        assert toolset is not None
        try:
            return [
                await toolset.call("fail", '{"reason": "boom"}'),
                await toolset.call("add", '{"a": "not a number"}'),
                await toolset.call("add", "[1, 2]"),
                await toolset.call("add", "{broken"),
                await toolset.call("slow", '{"seconds": 5}'),
                await toolset.call("add", '{"a": 1, "b": 1}'),  # the session survived all of that
            ]
        finally:
            await toolset.close()

    failed, invalid, not_object, broken, slow, ok = run(scenario())
    for item in (failed, invalid, not_object, broken, slow):
        call = McpCall.model_validate(item)
        assert call.status == "failed" and call.output is None and call.error is not None
        assert call_output_text(item).startswith("Error: ")
    assert failed["error"]["type"] == "mcp_tool_execution_error"
    assert "fail" in call_output_text(failed)
    assert invalid["error"]["type"] == "mcp_tool_execution_error"
    assert not_object["error"] == {
        "type": "mcp_protocol_error",
        "code": -32602,
        "message": "the tool arguments are not a JSON object",
    }
    assert broken["error"]["code"] == -32602 and broken["arguments"] == "{broken"
    assert (
        slow["error"]["type"] == "mcp_protocol_error" and "timed out after 0.5 s" in slow["error"]["message"]
    )
    assert ok["output"] == "2" and call_output_text(ok) == "2"


def test_output_is_cut_to_the_limit(mcp_server: McpTestServer) -> None:
    async def scenario() -> dict[str, Any]:
        settings = settings_for(mcp_server, max_output_chars=1)
        toolset = await McpToolset.open([mcp_tool(mcp_server.http_url)], settings)
        assert toolset is not None
        try:
            return await toolset.call("add", '{"a": 50, "b": 50}')
        finally:
            await toolset.close()

    assert run(scenario())["output"] == "1\n[output truncated]"


def test_headers_and_authorization_reach_the_server(mcp_server: McpTestServer) -> None:
    async def scenario(url: str) -> None:
        tool = mcp_tool(url, headers={"X-Tenant": "t-7"}, authorization="tok-123")
        toolset = await McpToolset.open([tool], settings_for(mcp_server))
        assert toolset is not None
        await toolset.close()

    for url in (mcp_server.http_url, mcp_server.sse_url):
        before = len(mcp_server.headers)
        run(scenario(url))
        seen = mcp_server.headers[before:]
        assert seen and all(h.get("x-tenant") == "t-7" for h in seen)
        assert all(h.get("authorization") == "Bearer tok-123" for h in seen)


def test_colliding_names_are_namespaced(mcp_server: McpTestServer) -> None:
    async def scenario() -> McpToolset:
        tools = [
            {"type": "function", "name": "lookup", "parameters": {}},
            mcp_tool(mcp_server.http_url, label="one", allowed_tools=["add", "lookup"]),
            mcp_tool(mcp_server.sse_url, label="two", allowed_tools=["add"]),
        ]
        toolset = await McpToolset.open(tools, settings_for(mcp_server))
        assert toolset is not None
        try:
            item = await toolset.call("two__add", '{"a": 1, "b": 2}')
            assert item["server_label"] == "two" and item["name"] == "add" and item["output"] == "3"
        finally:
            await toolset.close()
        return toolset

    toolset = run(scenario())
    assert [i["server_label"] for i in toolset.list_items] == ["one", "two"]
    assert sorted(t["function"]["name"] for t in toolset.chat_tools()) == [
        "one__add",
        "one__lookup",
        "two__add",
    ]
    assert toolset.server_label("one__lookup") == "one" and toolset.tool_name("one__lookup") == "lookup"
    assert toolset.server_of("two__add") == ("two", "add")
    assert not toolset.owns("lookup")  # the client's function tool keeps its name
    assert toolset.max_steps == McpSettings().max_steps


def test_tools_as_request_schema_models(mcp_server: McpTestServer) -> None:
    """The runner may pass the validated request's tool models instead of dicts."""
    from infergate.schemas.responses import ResponsesRequest

    body = {
        "model": "m",
        "input": "hi",
        "tools": [{"type": "function", "name": "f"}, mcp_tool(mcp_server.sse_url)],
    }
    params = ResponsesRequest.model_validate(body)

    async def scenario() -> list[str]:
        toolset = await McpToolset.open(params.tools, settings_for(mcp_server))
        assert toolset is not None
        await toolset.close()
        return [t["function"]["name"] for t in toolset.chat_tools()]

    assert sorted(run(scenario())) == ["add", "fail", "lookup", "slow"]
    bad = ResponsesRequest.model_validate(
        {**body, "tools": [body["tools"][0], mcp_tool("http://10.9.9.9/mcp")]}
    )
    with pytest.raises(InvalidRequest) as err:
        run(McpToolset.open(bad.tools, settings_for(mcp_server)))
    assert err.value.param == "tools[1].server_url"


def test_no_mcp_tools_is_none(mcp_server: McpTestServer) -> None:
    assert run(McpToolset.open([{"type": "function", "name": "f"}], McpSettings())) is None
    assert run(McpToolset.open(None, McpSettings())) is None


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"require_approval": "always"}, "tools[1].require_approval", "'never'"),
        ({"require_approval": None}, "tools[1].require_approval", "'never'"),
        ({"require_approval": {"never": {"tool_names": ["add"]}}}, "tools[1].require_approval", "'never'"),
        ({"server_label": ""}, "tools[1].server_label", "server_label"),
        ({"server_url": None, "connector_id": "connector_gmail"}, "tools[1].server_url", "connectors"),
        ({"server_url": "http://127.0.0.1:1/mcp"}, "tools[1].server_url", "not allowed"),
        ({"headers": {"x": 1}}, "tools[1].headers", "headers"),
        ({"headers": ["x"]}, "tools[1].headers", "headers"),
        ({"authorization": 5}, "tools[1].authorization", "authorization"),
        ({"allowed_tools": "add"}, "tools[1].allowed_tools", "allowed_tools"),
        ({"allowed_tools": {"tool_names": ["add"], "other": 1}}, "tools[1].allowed_tools", "allowed_tools"),
    ],
)
def test_bad_tool_entries_are_400_naming_the_field(
    mcp_server: McpTestServer, change: dict[str, Any], param: str, words: str
) -> None:
    before = len(mcp_server.headers)
    tools = [{"type": "function", "name": "f"}, {**mcp_tool(mcp_server.http_url), **change}]
    with pytest.raises(InvalidRequest) as err:
        run(McpToolset.open(tools, settings_for(mcp_server)))
    assert err.value.param == param and words in err.value.message
    assert len(mcp_server.headers) == before  # nothing was sent to any server


def test_duplicate_labels_and_empty_allow_list(mcp_server: McpTestServer) -> None:
    tools = [mcp_tool(mcp_server.http_url), mcp_tool(mcp_server.sse_url)]
    with pytest.raises(InvalidRequest) as err:
        run(McpToolset.open(tools, settings_for(mcp_server)))
    assert err.value.param == "tools[0].server_label"
    with pytest.raises(InvalidRequest) as err:
        run(McpToolset.open([mcp_tool(mcp_server.http_url)], McpSettings()))
    assert err.value.param == "tools[0].server_url" and "INFERGATE_MCP_ALLOWED_URLS" in err.value.message


def test_loopback_by_name_needs_localhost_or_the_literal_address(mcp_server: McpTestServer) -> None:
    url = f"http://localhost:{mcp_server.http_port}/mcp"
    settings = McpSettings(allowed_urls=parse_allow_list(f"http://localhost:{mcp_server.http_port}/"))

    async def scenario() -> None:
        toolset = await McpToolset.open([mcp_tool(url)], settings)
        assert toolset is not None
        await toolset.close()

    run(scenario())  # `localhost` listed: loopback is explicit


def test_unreachable_and_broken_servers(mcp_server: McpTestServer) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    settings = McpSettings(
        allowed_urls=parse_allow_list(
            f"http://127.0.0.1:{dead_port}/,http://127.0.0.1:{mcp_server.http_port}/"
        ),
        connect_timeout=5,
    )
    with pytest.raises(Unavailable) as err:
        run(McpToolset.open([mcp_tool(f"http://127.0.0.1:{dead_port}/mcp")], settings))
    assert err.value.param == "tools[0].server_url" and "'tools'" in err.value.message
    with pytest.raises(UpstreamError) as err2:  # a path the server does not serve
        run(McpToolset.open([mcp_tool(f"http://127.0.0.1:{mcp_server.http_port}/nothing")], settings))
    assert err2.value.param == "tools[0].server_url" and "Not Found" in err2.value.message


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from infergate.config import SettingError

    for name in ("ALLOWED_URLS", "MAX_STEPS", "CONNECT_TIMEOUT", "CALL_TIMEOUT", "MAX_OUTPUT_CHARS"):
        monkeypatch.delenv(f"INFERGATE_MCP_{name}", raising=False)
    assert McpSettings.from_env() == McpSettings()
    monkeypatch.setenv("INFERGATE_MCP_ALLOWED_URLS", "https://a.example/,http://10.0.0.5:8080")
    monkeypatch.setenv("INFERGATE_MCP_MAX_STEPS", "3")
    monkeypatch.setenv("INFERGATE_MCP_CALL_TIMEOUT", "2.5")
    settings = McpSettings.from_env()
    assert [p.raw for p in settings.allowed_urls] == ["https://a.example/", "http://10.0.0.5:8080"]
    assert settings.max_steps == 3 and settings.call_timeout == 2.5
    monkeypatch.setenv("INFERGATE_MCP_MAX_STEPS", "0")
    with pytest.raises(SettingError, match="INFERGATE_MCP_MAX_STEPS"):
        McpSettings.from_env()


def test_a_server_that_never_answers_is_cut_off_at_the_connect_timeout() -> None:
    import socket
    import time

    with socket.socket() as listener:  # accepts connections (the kernel does) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        settings = McpSettings(
            allowed_urls=parse_allow_list(f"http://127.0.0.1:{port}/"), connect_timeout=0.5
        )
        started = time.monotonic()
        with pytest.raises(Unavailable) as err:
            run(McpToolset.open([mcp_tool(f"http://127.0.0.1:{port}/mcp")], settings))
        assert time.monotonic() - started < 5
    assert err.value.param == "tools[0].server_url" and "did not answer within 0.5 s" in err.value.message


def test_a_server_gone_mid_loop_makes_failed_items_not_exceptions() -> None:
    server = McpTestServer().start()
    stopped = False
    try:

        async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
            nonlocal stopped
            toolset = await McpToolset.open([mcp_tool(server.http_url)], settings_for(server, call_timeout=3))
            assert toolset is not None
            try:
                ok = await toolset.call("add", '{"a": 1, "b": 2}')
                await asyncio.to_thread(server.stop)
                stopped = True
                gone = await toolset.call("add", '{"a": 1, "b": 2}')
                return ok, gone
            finally:
                await toolset.close()

        ok, gone = run(scenario())
    finally:
        if not stopped:
            server.stop()
    assert ok["output"] == "3"
    assert (
        gone["status"] == "failed"
        and gone["output"] is None
        and gone["error"]["type"]
        in (
            "mcp_protocol_error",
            "http_error",
        )
    )
