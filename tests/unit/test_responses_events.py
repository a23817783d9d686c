"""Responses output building: <think> splitting, item order, event numbering (no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infergate.responses.events import OutputBuilder, Sequencer
from infergate.responses.output import ChatOutput, ThinkSplitter
from infergate.responses.translate import chat_messages, drop_oldest_turn


def split(chunks: list[str]) -> list[tuple[str, str]]:
    s = ThinkSplitter()
    out: list[tuple[str, str]] = []
    for c in chunks:
        out += s.feed(c)
    out += s.flush()
    merged: list[tuple[str, str]] = []
    for kind, text in out:
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        elif text:
            merged.append((kind, text))
    return merged


@pytest.mark.parametrize(
    "chunks",
    [
        ["<think>Two plus two.</think>\n\nIt is 4."],
        ["<", "think>", "Two plus", " two.</", "think>", "\n", "\nIt", " is 4."],
        ["  <think>\nTwo plus two.\n</think>It is 4."],
    ],
)
def test_think_block_splits_in_any_chunking(chunks: list[str]) -> None:
    assert split(chunks) == [("reasoning", "Two plus two."), ("text", "It is 4.")]


def test_text_without_think_passes_and_unclosed_think_stays_reasoning() -> None:
    assert split(["Hello ", "<think> is a tag"]) == [("text", "Hello <think> is a tag")]
    assert split(["<think>still thinking"]) == [("reasoning", "still thinking")]
    assert split(["<thin"]) == [("text", "<thin")]


def run(
    deltas: list[dict[str, Any]], finish: str = "stop", owner: Any = None
) -> tuple[list[dict], list[dict]]:
    output: list[dict[str, Any]] = []
    out = ChatOutput(OutputBuilder(Sequencer(), output, owner))
    events = []
    for d in deltas:
        events += out.chunk({"choices": [{"index": 0, "delta": d}]})
    events += out.chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    events += out.finish()
    return events, output


def test_items_get_true_output_indexes_and_consecutive_numbers() -> None:
    events, output = run(
        [
            {"reasoning_content": "think"},
            {"content": "Hi"},
            {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}]},
            {"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{"}}]},
            {"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]},
        ],
        finish="tool_calls",
    )
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [(o["type"], o["status"]) for o in output] == [
        ("reasoning", "completed"),
        ("message", "completed"),
        ("function_call", "completed"),
        ("function_call", "completed"),
    ]
    added = [
        (e["output_index"], e["item"]["type"]) for e in events if e["type"] == "response.output_item.added"
    ]
    assert added == [(0, "reasoning"), (1, "message"), (2, "function_call"), (3, "function_call")]
    done = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert done == [0, 1, 2, 3]
    assert output[3]["arguments"] == "{}" and output[3]["call_id"] == "c2"
    assert json.dumps(events)  # plain JSON all the way


def test_cut_message_is_incomplete() -> None:
    _, output = run([{"content": "Once upon"}], finish="length")
    assert output[0]["status"] == "incomplete" and output[0]["content"][0]["text"] == "Once upon"


def test_mcp_owned_calls_become_mcp_call_items() -> None:
    events, output = run(
        [{"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "lookup", "arguments": '{"k": 1}'}}]}],
        finish="tool_calls",
        owner=lambda name: "facts" if name == "lookup" else None,
    )
    assert output[0]["type"] == "mcp_call" and output[0]["server_label"] == "facts"
    types = [e["type"] for e in events]
    assert "response.mcp_call_arguments.delta" in types and "response.mcp_call_arguments.done" in types
    assert "response.output_item.done" not in types  # done once the call has run


def test_function_calls_and_outputs_replay_as_chat_messages() -> None:
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me check."}],
        },
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "id": "fc_2", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": "two"},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "x"}],
        },
    ]
    messages = chat_messages(items, "sys")
    assert messages[0] == {"role": "system", "content": "sys"}
    assert messages[2]["content"] == "Let me check." and [c["id"] for c in messages[2]["tool_calls"]] == [
        "c1",
        "c2",
    ]
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_drop_oldest_turn_keeps_system_and_whole_turns() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"},
        {"role": "user", "content": "2"},
    ]
    assert drop_oldest_turn(messages) == [messages[0], messages[4]]
    assert drop_oldest_turn([messages[0], messages[4]]) is None
