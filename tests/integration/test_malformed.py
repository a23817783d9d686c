"""Malformed requests get a clear 4xx in OpenAI's error shape (DigitalOcean's too under /v2), never a 5xx.

Every case checks the status, the error object's four fields, which field `param` names, and that
the answer carries an x-request-id. The body-size cases run against a server of their own with a
4 KiB limit so they stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import upstream_catalog
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

SMALL_LIMIT = 4096
USER = [{"role": "user", "content": "What is the capital of France?"}]
OK_BODY = {"model": "standin", "messages": USER}
KEYS_PATH = "/v2/gen-ai/models/api_keys"
ANY = object()  # assert_error: any param


def chat(**fields: Any) -> dict[str, Any]:
    """A valid chat body with some fields replaced; a field set to `...` is removed."""
    body = {**OK_BODY, **fields}
    return {k: v for k, v in body.items() if v is not ...}


def part(cache_control: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": cache_control}]}]


def assert_error(
    r: httpx.Response,
    status: int,
    *,
    param: Any = ANY,
    code: str | None = None,
    v2: bool = False,
) -> dict[str, Any]:
    """The OpenAI error shape (plus DigitalOcean's top level under /v2) with an x-request-id header."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    request_id = r.headers.get("x-request-id")
    assert request_id and request_id.startswith("req_"), r.headers
    body = r.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["type"], str) and error["type"], error
    if param is not ANY:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    if v2:
        assert body["id"] and isinstance(body["id"], str), body
        assert body["id"] != "server_error", body  # a 4xx is the client's fault: DO ids name it
        assert body["message"] == error["message"], body
        assert body["request_id"] == request_id, body
    else:
        assert set(body) == {"error"}, body
    return error


@pytest.fixture(scope="module")
def small_server(
    upstream: StandInUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("small-body"),
        upstream_catalog(upstream.base_url),
        env={"INFERGATE_MAX_BODY_BYTES": str(SMALL_LIMIT)},
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def small_key(small_server: ServerProcess) -> str:
    return small_server.create_key("small")["secret_key"]


def post_chat(
    server: ServerProcess,
    key: str,
    body: Any = None,
    *,
    content: bytes | None = None,
    content_type: str | None = "application/json",
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if content_type:
        headers["content-type"] = content_type
    if content is None:
        content = orjson.dumps(body)
    return httpx.post(f"{server.url}/v1/chat/completions", content=content, headers=headers, timeout=30)


# (body, expected param); every one is a 400 invalid_request_error
BAD_BODIES = [
    # wrong types: strict, a string is not coerced into a number
    pytest.param(chat(temperature="0.5"), "temperature", id="temperature-as-string"),
    pytest.param(chat(temperature=True), "temperature", id="temperature-as-bool"),
    pytest.param(chat(max_tokens="10"), "max_tokens", id="max_tokens-as-string"),
    pytest.param(chat(max_tokens=10.0), "max_tokens", id="max_tokens-as-float"),
    pytest.param(chat(messages="hello"), "messages", id="messages-as-string"),
    pytest.param(chat(messages=["hello"]), "messages.0", id="message-as-string"),
    pytest.param(chat(messages=[None]), "messages.0", id="message-null"),
    pytest.param(chat(n=1.5), "n", id="n-as-float"),
    pytest.param(chat(n=2.0), "n", id="n-as-integral-float"),
    pytest.param(chat(model=5), "model", id="model-as-number"),
    pytest.param(chat(stream="true"), "stream", id="stream-as-string"),
    pytest.param(chat(logit_bias={"50256": "x"}), "logit_bias.50256", id="logit_bias-value-string"),
    # missing fields
    pytest.param(chat(model=...), "model", id="no-model"),
    pytest.param(chat(model=""), "model", id="empty-model"),
    pytest.param(chat(messages=...), "messages", id="no-messages"),
    pytest.param(chat(messages=[]), "messages", id="empty-messages"),
    pytest.param(chat(messages=[{"content": "hi"}]), "messages.0.role", id="message-without-role"),
    pytest.param(
        chat(messages=[{"role": "user"}]),
        "messages.0.content",
        id="user-without-content",
    ),
    pytest.param(
        chat(messages=[{"role": "tool", "content": "42"}]),
        "messages.0.tool_call_id",
        id="tool-without-tool_call_id",
    ),
    pytest.param(
        chat(messages=[*USER, {"role": "user", "content": 5}]),
        "messages.1.content",
        id="second-message-content-number",
    ),
    # bad values
    pytest.param(chat(messages=[{"role": "bot", "content": "hi"}]), "messages.0.role", id="role-bot"),
    pytest.param(chat(temperature=1.5), "temperature", id="temperature-1.5"),
    pytest.param(chat(temperature=-0.1), "temperature", id="temperature-negative"),
    pytest.param(chat(top_p=2), "top_p", id="top_p-2"),
    pytest.param(chat(max_tokens=0), "max_tokens", id="max_tokens-0"),
    pytest.param(chat(n=0), "n", id="n-0"),
    pytest.param(
        chat(stop=["a", "b", "c", "d", "e"]),
        "stop",
        id="five-stop-sequences",
    ),
    pytest.param(
        chat(top_logprobs=2),
        "top_logprobs",
        id="top_logprobs-without-logprobs",
    ),
    pytest.param(
        chat(stream_options={"include_usage": True}),
        "stream_options",
        id="stream_options-without-stream",
    ),
    pytest.param(
        chat(messages=part({"type": "persistent"})),
        "messages.0.content.0.cache_control.type",
        id="cache_control-bad-type",
    ),
    pytest.param(
        chat(messages=part({"type": "ephemeral", "ttl": "2h"})),
        "messages.0.content.0.cache_control.ttl",
        id="cache_control-bad-ttl",
    ),
    pytest.param(
        chat(messages=part({"type": "ephemeral", "ttl": "5m", "scope": "global"})),
        "messages.0.content.0.cache_control.scope",
        id="cache_control-unknown-field",
    ),
    pytest.param(
        chat(tools=[{"type": "function", "function": {"name": "has space"}}]),
        "tools.0.function.name",
        id="tool-name-with-space",
    ),
    pytest.param(chat(response_format={"type": "json_schema"}), "response_format", id="json_schema-missing"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_bad_chat_body_is_400_naming_the_field(
    server: ServerProcess, key: str, body: dict[str, Any], param: str
) -> None:
    error = assert_error(post_chat(server, key, body), 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_request"
    # the message names the field too, for people reading logs rather than `param`
    assert error["message"].startswith(f"{param}: "), error


@pytest.mark.parametrize(
    ("content", "what"),
    [
        pytest.param(b'{"model": "standin", "messages": ', "not valid JSON", id="truncated-json"),
        pytest.param(b"{'model': 'standin'}", "not valid JSON", id="single-quotes"),
        pytest.param(b'{"model": "standin", "messages": [], "temperature": NaN}', "not valid JSON", id="nan"),
        pytest.param(b'{"model": "standin\xff"}', "not valid JSON", id="invalid-utf8"),
        pytest.param(b"[" * 2000 + b"]" * 2000, "not valid JSON", id="deeply-nested"),
        pytest.param(b'[{"model": "standin"}]', "JSON object", id="json-list"),
        pytest.param(b"42", "JSON object", id="json-number"),
        pytest.param(b'"hello"', "JSON object", id="json-string"),
        pytest.param(b"null", "JSON object", id="json-null"),
        pytest.param(b"", "empty", id="empty-body"),
        pytest.param(b"   ", "not valid JSON", id="whitespace-body"),
    ],
)
def test_body_that_is_not_a_json_object_is_400(
    server: ServerProcess, key: str, content: bytes, what: str
) -> None:
    error = assert_error(post_chat(server, key, content=content), 400, param=None)
    assert error["type"] == "invalid_request_error"
    assert what in error["message"], error


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", None],
    ids=["text-plain", "form-urlencoded", "no-content-type"],
)
def test_valid_json_with_another_content_type_is_served(
    server: ServerProcess, key: str, content_type: str | None
) -> None:
    """`curl -d '{...}'` labels JSON as form-urlencoded: a JSON body is read as JSON whatever the label."""
    r = post_chat(server, key, OK_BODY, content_type=content_type)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Paris is the capital of France."
    assert r.headers["x-request-id"].startswith("req_")


def test_form_fields_instead_of_json_is_400(server: ServerProcess, key: str) -> None:
    r = post_chat(
        server, key, content=b"model=standin&messages=hi", content_type="application/x-www-form-urlencoded"
    )
    assert_error(r, 400, param=None, code="invalid_json")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_unknown_model_is_404_model_not_found(server: ServerProcess, key: str, stream: bool) -> None:
    r = post_chat(server, key, chat(model="no-such-model", stream=stream))
    error = assert_error(r, 404, param="model", code="model_not_found")
    assert error["type"] == "not_found_error"
    assert "no-such-model" in error["message"]


def test_missing_or_wrong_key_is_401_before_the_body_is_judged(server: ServerProcess) -> None:
    url = f"{server.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json")
    assert_error(r, 401, code="missing_api_key")
    r = httpx.post(url, content=b"{not json", headers={"Authorization": "Bearer sk-ig-nope"})
    assert_error(r, 401, code="invalid_api_key")
    r = httpx.post(url, json=OK_BODY, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_error(r, 401, code="invalid_authorization")


# --- body size ---------------------------------------------------------------------------------


def test_body_over_the_limit_is_413(small_server: ServerProcess, small_key: str) -> None:
    body = chat(messages=[{"role": "user", "content": "x" * SMALL_LIMIT}])
    error = assert_error(post_chat(small_server, small_key, body), 413, param=None, code="request_too_large")
    assert str(SMALL_LIMIT) in error["message"]


def test_body_just_under_the_limit_is_served(small_server: ServerProcess, small_key: str) -> None:
    base = len(orjson.dumps(chat(messages=[{"role": "user", "content": ""}])))
    body = chat(messages=[{"role": "user", "content": "x" * (SMALL_LIMIT - base)}])
    assert len(orjson.dumps(body)) == SMALL_LIMIT
    r = post_chat(small_server, small_key, body)
    assert r.status_code == 200, r.text


def test_chunked_body_without_content_length_over_the_limit_is_413(
    small_server: ServerProcess, small_key: str
) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            sent.append(1)
            yield b" " * 512

    r = httpx.post(
        f"{small_server.url}/v1/chat/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {small_key}", "content-type": "application/json"},
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert_error(r, 413, param=None, code="request_too_large")


def test_chunked_body_under_the_limit_is_served(small_server: ServerProcess, small_key: str) -> None:
    raw = orjson.dumps(OK_BODY)
    r = httpx.post(
        f"{small_server.url}/v1/chat/completions",
        content=iter([raw[:10], raw[10:]]),
        headers={"Authorization": f"Bearer {small_key}", "content-type": "application/json"},
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 200, r.text


def test_oversized_v2_body_is_413_in_both_shapes(small_server: ServerProcess) -> None:
    r = httpx.post(
        f"{small_server.url}{KEYS_PATH}", json={"name": "x" * SMALL_LIMIT}, headers=small_server.admin()
    )
    assert_error(r, 413, param=None, code="request_too_large", v2=True)


def test_server_keeps_serving_after_rejecting_big_bodies(small_server: ServerProcess, small_key: str) -> None:
    with httpx.Client(headers={"Authorization": f"Bearer {small_key}"}) as client:
        for _ in range(3):
            r = client.post(f"{small_server.url}/v1/chat/completions", content=b"x" * (SMALL_LIMIT * 4))
            assert r.status_code == 413
            r = client.post(f"{small_server.url}/v1/chat/completions", json=OK_BODY)
            assert r.status_code == 200, r.text


def test_default_limit_is_8_mib(server: ServerProcess, key: str) -> None:
    limit = 8 * 1024 * 1024
    r = post_chat(server, key, content=b" " * (limit + 1))
    error = assert_error(r, 413, code="request_too_large")
    assert str(limit) in error["message"]


# --- management API (/v2): the same errors plus DigitalOcean's top level -----------------------


@pytest.mark.parametrize(
    ("content", "param"),
    [
        pytest.param(b"{}", "name", id="no-name"),
        pytest.param(b'{"name": 5}', "name", id="name-number"),
        pytest.param(b'{"name": ""}', "name", id="name-empty"),
        pytest.param(b'{"name": "' + b"x" * 256 + b'"}', "name", id="name-too-long"),
        pytest.param(b'{"name": ', None, id="invalid-json"),
        pytest.param(b'["name"]', None, id="json-list"),
        pytest.param(b"", None, id="empty-body"),
    ],
)
def test_bad_key_create_body_is_400_in_both_shapes(
    server: ServerProcess, content: bytes, param: str | None
) -> None:
    r = httpx.post(
        f"{server.url}{KEYS_PATH}",
        content=content,
        headers={**server.admin(), "content-type": "application/json"},
    )
    error = assert_error(r, 400, param=param, v2=True)
    assert r.json()["id"] == "bad_request"
    assert error["type"] == "invalid_request_error"


def test_rename_with_mismatched_uuid_is_400(server: ServerProcess) -> None:
    created = server.create_key("mismatch")
    r = httpx.put(
        f"{server.url}{KEYS_PATH}/{created['uuid']}",
        json={"api_key_uuid": "other", "name": "n"},
        headers=server.admin(),
    )
    assert_error(r, 400, param="api_key_uuid", v2=True)


@pytest.mark.parametrize(("method", "suffix"), [("PUT", ""), ("PUT", "/regenerate"), ("DELETE", "")])
def test_unknown_key_uuid_is_404_in_both_shapes(server: ServerProcess, method: str, suffix: str) -> None:
    r = httpx.request(
        method,
        f"{server.url}{KEYS_PATH}/00000000-0000-0000-0000-000000000000{suffix}",
        json={"name": "n"},
        headers=server.admin(),
    )
    assert_error(r, 404, v2=True)
    assert r.json()["id"] == "not_found"


@pytest.mark.parametrize("query", ["page=0", "page=abc", "per_page=0", "per_page=201"])
def test_bad_pagination_is_400(server: ServerProcess, query: str) -> None:
    r = httpx.get(f"{server.url}{KEYS_PATH}?{query}", headers=server.admin())
    error = assert_error(r, 400, v2=True)
    field = query.split("=")[0]
    assert error["param"] in (field, f"query.{field}"), error


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Token x"}],
    ids=["none", "wrong-token", "wrong-scheme"],
)
def test_management_without_admin_token_is_401_in_both_shapes(
    server: ServerProcess, key: str, headers: dict[str, str]
) -> None:
    r = httpx.post(f"{server.url}{KEYS_PATH}", json={"name": "x"}, headers=headers)
    assert_error(r, 401, v2=True)
    assert r.json()["id"] == "unauthorized"


def test_model_access_key_cannot_manage_keys(server: ServerProcess, key: str) -> None:
    r = httpx.get(f"{server.url}{KEYS_PATH}", headers={"Authorization": f"Bearer {key}"})
    assert_error(r, 401, v2=True)


# --- routes and methods ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/nope", "/v1/chat/completions/extra", "/v1/audio/speech/x/y"])
def test_unknown_route_is_404(server: ServerProcess, key: str, path: str) -> None:
    r = httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {key}"})
    error = assert_error(r, 404, param=None)
    assert error["type"] == "not_found_error"
    assert path in error["message"]


def test_unknown_v2_route_is_404_in_both_shapes(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/v2/gen-ai/nope", headers=server.admin())
    assert_error(r, 404, param=None, v2=True)
    assert r.json()["id"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("POST", "/health", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    server: ServerProcess, key: str, method: str, path: str, allow: str
) -> None:
    r = httpx.request(method, f"{server.url}{path}", headers={"Authorization": f"Bearer {key}"})
    error = assert_error(r, 405, param=None)
    assert error["type"] == "invalid_request_error"
    assert allow in r.headers["allow"]


def test_wrong_method_on_v2_is_405_in_both_shapes(server: ServerProcess) -> None:
    r = httpx.patch(f"{server.url}{KEYS_PATH}", json={"name": "x"}, headers=server.admin())
    assert_error(r, 405, param=None, v2=True)
    assert r.json()["id"] == "method_not_allowed"
    # Starlette names only the first route that matched the path (POST here), not GET as well.
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert allowed and allowed <= {"GET", "POST"}, r.headers["allow"]


# --- inputs that once gave a 500 (issue 9, point 4) -------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["²", "٣", "¹²", "-1", "+1", "1.5", "1e3", "abc", "", " 1", "1\n", "0x1f", "12345678901", "1" * 5000],
    ids=repr,
)
def test_logit_bias_key_that_is_not_an_ascii_token_id_is_400(
    server: ServerProcess, key: str, token: str
) -> None:
    """`"²".isdigit()` is True but `int("²")` raises: the keys are checked as ASCII digits up front."""
    error = assert_error(
        post_chat(server, key, chat(logit_bias={"42": 1, token: 5})), 400, param="logit_bias"
    )
    assert error["message"].startswith("logit_bias: ") and "token id" in error["message"], error


@pytest.mark.parametrize("value", [100.5, -101, 1e300])
def test_logit_bias_value_out_of_range_is_400(server: ServerProcess, key: str, value: float) -> None:
    assert_error(post_chat(server, key, chat(logit_bias={"42": value})), 400, param="logit_bias.42")


def test_logit_bias_within_bounds_is_served(server: ServerProcess, key: str) -> None:
    r = post_chat(server, key, chat(logit_bias={"0": -100, "9999999999": 100, "42": 0.5}))
    assert r.status_code == 200, r.text


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        pytest.param({"tool_choice": "auto"}, "only allowed with tools", id="auto-without-tools"),
        pytest.param({"tool_choice": "required"}, "only allowed with tools", id="required-without-tools"),
        pytest.param({"tool_choice": "none"}, "only allowed with tools", id="none-without-tools"),
        pytest.param(
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            "only allowed with tools",
            id="named-without-tools",
        ),
        pytest.param(
            {"tool_choice": "auto", "tools": []}, "only allowed with tools", id="auto-with-empty-tools"
        ),
        pytest.param(
            {"tool_choice": {"type": "function", "function": {"name": "other"}}, "tools": WEATHER},
            "not in tools",
            id="named-function-not-in-tools",
        ),
    ],
)
def test_tool_choice_without_matching_tools_is_400(
    server: ServerProcess, key: str, fields: dict[str, Any], why: str
) -> None:
    """As OpenAI and vLLM answer: tool_choice (even "none") is only allowed with tools."""
    error = assert_error(post_chat(server, key, chat(**fields)), 400, param="tool_choice")
    assert why in error["message"], error


@pytest.mark.parametrize(
    "choice", ["none", "auto", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_tool_choice_with_tools_is_served(server: ServerProcess, key: str, choice: Any) -> None:
    r = post_chat(server, key, chat(tools=WEATHER, tool_choice=choice))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("end", "inf"),
        ("end", "-inf"),
        ("start", "nan"),
        ("end", "Infinity"),
        ("start", "1e30"),
        ("start", "-1e30"),
        ("end", "99999999999999"),
        ("end", "1e400"),
        ("end", "1e308"),  # finite seconds, infinite milliseconds
        ("start", "-1"),
        ("start", "0001-01-01T00:00:00+01:00"),  # before year 1 in UTC
        ("end", "9999-12-31T23:59:59-01:00"),  # after year 9999 in UTC
        ("start", "yesterday"),
        ("start", "x" * 5000),
    ],
    ids=lambda v: v if len(v) < 40 else v[:10] + "...",
)
def test_usage_report_time_out_of_range_is_400_naming_it(
    server: ServerProcess, param: str, value: str
) -> None:
    r = httpx.get(f"{server.url}/v2/gen-ai/usage", params={param: value}, headers=server.admin())
    error = assert_error(r, 400, param=param, v2=True)
    assert error["message"].startswith(f"{param}: ") and len(error["message"]) < 300, error


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("0", "253402300799"),
        ("1970-01-01", "9999-12-31T23:59:59.999999Z"),
        ("1764028800.5", ""),
        ("2026-11-01T10:00:00+02:00", "2026-11-02"),
    ],
)
def test_usage_report_accepts_the_whole_range(server: ServerProcess, start: str, end: str) -> None:
    r = httpx.get(
        f"{server.url}/v2/gen-ai/usage", params={"start": start, "end": end}, headers=server.admin()
    )
    assert r.status_code == 200, r.text


def test_usage_cli_with_an_impossible_time_exits_with_a_message(server: ServerProcess) -> None:
    result = server.cli("usage", "--end", "inf", check=False)
    assert result.returncode == 1 and "end:" in result.stderr and "Traceback" not in result.stderr, result


# --- settings: a bad INFERGATE_* value stops `infergate` with exit 2, naming it -------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INFERGATE_MAX_BODY_BYTES", "abc"),
        ("INFERGATE_MAX_BODY_BYTES", "0"),
        ("INFERGATE_MAX_BODY_BYTES", "1.5"),
        ("INFERGATE_LEDGER_FLUSH_MS", "fast"),
        ("INFERGATE_LEDGER_FLUSH_MS", "-200"),
        ("INFERGATE_SHUTDOWN_GRACE", "soon"),
        ("INFERGATE_SHUTDOWN_GRACE", "0"),
        ("INFERGATE_ACCESS_LOG", "maybe"),
        ("INFERGATE_KEY_CACHE_TTL", "soon"),
        ("INFERGATE_KEY_CACHE_TTL", "nan"),
        ("INFERGATE_KEY_CACHE_TTL", "-1"),
        ("INFERGATE_FAST_ROUTES", "perhaps"),
    ],
)
def test_bad_setting_stops_serve_with_exit_2_naming_it(tmp_path: Path, name: str, value: str) -> None:
    proc = ServerProcess(tmp_path / "data", "builtins = false\n", env={name: value})
    result = proc.cli("serve", "--port", str(proc.port), check=False)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert name in result.stderr and repr(value) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["keys", "list"], ["usage"], ["migrate"]])
def test_bad_setting_stops_every_command(tmp_path: Path, command: list[str]) -> None:
    proc = ServerProcess(tmp_path / "data", None, env={"INFERGATE_SHUTDOWN_GRACE": "-3"})
    result = proc.cli(*command, check=False)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "INFERGATE_SHUTDOWN_GRACE must be at least 1" in result.stderr and "Traceback" not in result.stderr


def test_good_settings_are_read(tmp_path: Path) -> None:
    env = {
        "INFERGATE_MAX_BODY_BYTES": " 4096 ",
        "INFERGATE_SHUTDOWN_GRACE": "5",
        "INFERGATE_ACCESS_LOG": "OFF",
    }
    proc = ServerProcess(tmp_path / "data", "builtins = false\n", env=env).start()
    try:
        secret = proc.create_key("settings")["secret_key"]
        r = post_chat(proc, secret, content=b" " * 5000)
        assert_error(r, 413, code="request_too_large")
        assert '"status":413' not in proc.log()  # the access log is off
    finally:
        assert proc.stop() == 0
