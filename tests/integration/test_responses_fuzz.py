"""Hypothesis fuzz of /v1/responses bodies through the real server and the stand-in upstream.

Bodies mix valid and invalid values of every documented field (odd text, wrong types, out of
range numbers, items of every kind, tools, formats). The property: never a 5xx; a 4xx is OpenAI's
error shape naming a field; a 200 is a Response that validates strictly (or, streamed, a clean
strict event sequence). Derandomized and bounded so it runs in well under a minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import hypothesis.strategies as st
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support.responses_upstream import ResponsesStandIn
from tests.support.server import ServerProcess

EXAMPLES = 150
VALID_EXAMPLES = 60
TRICKY = ["", " ", "\x00", "<|im_start|>", "<think>", "</think>", "{{ x }}", "🦙" * 10, "a" * 500]
text = st.one_of(st.sampled_from(TRICKY), st.text(max_size=40))
numbers = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False))
junk = st.one_of(st.none(), st.booleans(), numbers, text, st.lists(st.integers(), max_size=2), st.just({}))
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": text}),
    st.fixed_dictionaries({"type": st.just("input_image"), "image_url": st.one_of(text, junk)}),
    st.fixed_dictionaries({"type": st.just("output_text"), "text": text}),
    st.fixed_dictionaries({"type": text}),
    junk,
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", ""]),
        "content": st.one_of(text, st.lists(part, max_size=3), junk),
    },
    optional={"type": st.just("message")},
)
item = st.one_of(
    message,
    st.fixed_dictionaries(
        {"type": st.just("function_call"), "call_id": text, "name": text, "arguments": st.one_of(text, junk)}
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call_output"), "call_id": text, "output": st.one_of(text, junk)}
    ),
    st.fixed_dictionaries({"type": st.just("reasoning"), "summary": st.one_of(st.just([]), junk)}),
    st.fixed_dictionaries({"type": text}),
    junk,
)
tool = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("function"), "name": text},
        optional={
            "parameters": st.one_of(st.just({"type": "object", "properties": {}}), junk),
            "strict": junk,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["mcp", "web_search", "file_search"]), "server_label": text}
    ),
    junk,
)
fields = {
    "input": st.one_of(text, st.lists(item, max_size=4), junk),
    "instructions": st.one_of(text, junk),
    "max_output_tokens": st.one_of(st.integers(-2, 20), junk),
    "temperature": st.one_of(st.floats(-1, 2), junk),
    "top_p": st.one_of(st.floats(-1, 2), junk),
    "stream": st.one_of(st.booleans(), junk),
    "store": st.one_of(st.booleans(), junk),
    "previous_response_id": st.one_of(text, junk),
    "tools": st.one_of(st.lists(tool, max_size=2), junk),
    "tool_choice": st.one_of(
        st.sampled_from(["auto", "none", "required"]), st.just({"type": "function", "name": "f"}), junk
    ),
    "text": st.one_of(
        st.fixed_dictionaries(
            {
                "format": st.one_of(
                    st.fixed_dictionaries(
                        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])}
                    ),
                    junk,
                )
            }
        ),
        junk,
    ),
    "metadata": st.one_of(st.dictionaries(text, st.one_of(text, junk), max_size=3), junk),
    "truncation": st.one_of(st.sampled_from(["auto", "disabled"]), junk),
    "reasoning": st.one_of(
        st.fixed_dictionaries({"effort": st.one_of(st.sampled_from(["low", "high"]), junk)}), junk
    ),
    "user": st.one_of(text, junk),
    "conversation": st.one_of(st.none(), text),
    "frobnicate": junk,
}
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["r-reasoner", "r-tools", "r-vision", "r-thinker"]), "input": fields["input"]},
    optional={k: v for k, v in fields.items() if k != "input"},
)
# valid bodies: every field in range, odd text and item mixes (so most answers are 200s)
ok_text = st.one_of(st.sampled_from(TRICKY), st.text(max_size=40))
ok_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer"]),
        "content": st.one_of(
            ok_text,
            st.lists(
                st.fixed_dictionaries({"type": st.just("input_text"), "text": ok_text}),
                min_size=1,
                max_size=2,
            ),
        ),
    }
)
ok_call = st.fixed_dictionaries(
    {
        "type": st.just("function_call"),
        "call_id": st.just("c1"),
        "name": st.just("f"),
        "arguments": st.just("{}"),
    }
)
ok_output = st.fixed_dictionaries(
    {"type": st.just("function_call_output"), "call_id": st.just("c1"), "output": ok_text}
)
valid_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["r-reasoner", "r-tools", "r-thinker"]),
        # a function_call_output only after its call (else a 400, as OpenAI answers)
        "input": st.one_of(
            ok_text,
            st.lists(
                st.one_of(st.tuples(ok_message), st.tuples(ok_call), st.tuples(ok_call, ok_output)),
                min_size=1,
                max_size=4,
            ).map(lambda groups: [item for group in groups for item in group]),
        ),
    },
    optional={
        "instructions": ok_text,
        "max_output_tokens": st.integers(1, 50),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "stream": st.booleans(),
        "store": st.booleans(),
        "tools": st.just(
            [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]
        ),
        "text": st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_object"}}]),
        "metadata": st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
        "truncation": st.sampled_from(["auto", "disabled"]),
        "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "medium", "high"])}),
        "user": st.text(max_size=20),
    },
)
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    stand_in = ResponsesStandIn().start()
    catalog = "builtins = false\n"
    for model_id, upstream, extra in (
        ("r-reasoner", "reasoner", ""),
        ("r-tools", "toolcaller", ""),
        ("r-vision", "vision", "vision = true\n"),
        ("r-thinker", "thinker", ""),
    ):
        catalog += (
            f'\n[[models]]\nid = "{model_id}"\nbackend = "openai"\nbase_url = "{stand_in.base_url}"\n'
            f'upstream_model = "{upstream}"\n{extra}'
        )
    proc = ServerProcess(tmp_path_factory.mktemp("resp-fuzz"), catalog).start()
    yield proc, proc.create_key("fuzz")["secret_key"]
    proc.stop()
    stand_in.stop()


@hypothesis.settings(
    max_examples=VALID_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
@hypothesis.given(body=valid_bodies)
def test_valid_bodies_answer_strict_responses(
    fuzz_server: tuple[ServerProcess, str], body: dict[str, Any]
) -> None:
    check(fuzz_server, body, expect_ok=True)


@hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
@hypothesis.given(body=bodies)
def test_no_body_gets_a_server_error(fuzz_server: tuple[ServerProcess, str], body: dict[str, Any]) -> None:
    check(fuzz_server, body, expect_ok=False)


def check(fuzz_server: tuple[ServerProcess, str], body: dict[str, Any], expect_ok: bool) -> None:
    server, key = fuzz_server
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{server.url}/v1/responses", json=body, headers=headers, timeout=30) as r:
        raw = r.read()
    assert r.status_code < 500, raw[:500]
    hypothesis.event(f"status {r.status_code}")
    if expect_ok:
        assert r.status_code == 200, raw[:500]
    if r.status_code != 200:
        error = json.loads(raw)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
        for event in events:
            EVENTS.validate_python(event, strict=True)
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed")
    else:
        Response.model_validate(json.loads(raw), strict=True)
