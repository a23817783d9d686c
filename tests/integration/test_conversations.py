"""/v1/conversations through the real openai SDK: create, retrieve, update, delete, items (add,
list with the cursor, retrieve, delete), another key's 404, bad input, and the `conversation`
parameter of responses.create."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai.types.conversations import Conversation, ConversationItem
from pydantic import TypeAdapter

from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

ITEM = TypeAdapter(ConversationItem)


def text_of(item: Any) -> str:
    return item.content[0].text


def test_conversation_crud_and_items(server: ServerProcess) -> None:
    client, other = server.openai_client("conv-owner"), server.openai_client("conv-other")
    conv = client.conversations.create(
        metadata={"topic": "demo"}, items=[{"type": "message", "role": "user", "content": "Hello"}]
    )
    Conversation.model_validate(conv.model_dump(mode="json"), strict=True)
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "demo"}
    assert client.conversations.retrieve(conv.id).created_at == conv.created_at
    assert client.conversations.update(conv.id, metadata={"topic": "changed"}).metadata == {
        "topic": "changed"
    }
    added = client.conversations.items.create(
        conv.id,
        items=[
            {"type": "message", "role": "assistant", "content": "Hi there"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Bye"}]},
        ],
    )
    assert [text_of(i) for i in added.data] == ["Hi there", "Bye"] and added.first_id == added.data[0].id
    walked = list(client.conversations.items.list(conv.id, limit=1, order="asc"))  # one per page
    assert [text_of(i) for i in walked] == ["Hello", "Hi there", "Bye"]
    for item in walked:
        ITEM.validate_python(item.model_dump(mode="json"), strict=True)
    newest = client.conversations.items.list(conv.id, limit=2)
    assert [text_of(i) for i in newest.data] == ["Bye", "Hi there"] and newest.has_more
    one = client.conversations.items.retrieve(walked[1].id, conversation_id=conv.id)
    assert text_of(one) == "Hi there"
    after_delete = client.conversations.items.delete(walked[1].id, conversation_id=conv.id)
    assert after_delete.id == conv.id
    assert [text_of(i) for i in client.conversations.items.list(conv.id, order="asc")] == ["Hello", "Bye"]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(walked[1].id, conversation_id=conv.id)

    for call in (
        lambda: other.conversations.retrieve(conv.id),
        lambda: other.conversations.update(conv.id, metadata={"x": "y"}),
        lambda: other.conversations.items.list(conv.id),
        lambda: other.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}]),
        lambda: other.conversations.delete(conv.id),
        lambda: other.responses.create(model="standin", input="x", conversation=conv.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()

    deleted = client.conversations.delete(conv.id)
    assert deleted.deleted is True and deleted.object == "conversation.deleted"
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)


def test_bad_conversation_input_is_a_400_naming_the_field(server: ServerProcess) -> None:
    client = server.openai_client("conv-bad")
    cases = [
        ({"items": [{"role": "robot", "content": "x"}]}, "items[0].role"),
        ({"items": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "items[0].call_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"items": "not a list"}, "items"),
    ]
    for body, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.post("/conversations", body=body, cast_to=httpx.Response)
        assert param in (bad.value.body["param"] or ""), (body, bad.value.body)  # type: ignore[index]
    conv = client.conversations.create()
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(conv.id, items=[])
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.list(conv.id, limit=101)


def test_responses_in_a_conversation(server: ServerProcess, upstream: StandInUpstream) -> None:
    client = server.openai_client("conv-responses")
    conv = client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "My name is Ada."}]
    )
    first = client.responses.create(model="standin", input="What is my name? conv-1", conversation=conv.id)
    assert first.conversation is not None and first.conversation.id == conv.id
    sent = next(b["messages"] for b in reversed(upstream.requests) if "conv-1" in str(b["messages"][-1]))
    assert [m["role"] for m in sent] == ["user", "user"] and "Ada" in str(sent[0]["content"])
    items = list(client.conversations.items.list(conv.id, order="asc"))
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"),
        ("message", "user"),
        ("message", "assistant"),
    ]
    assert text_of(items[2]) == first.output_text
    client.responses.create(model="standin", input="And again? conv-2", conversation={"id": conv.id})
    sent = next(b["messages"] for b in reversed(upstream.requests) if "conv-2" in str(b["messages"][-1]))
    assert [m["role"] for m in sent] == ["user", "user", "assistant", "user"]
    assert len(list(client.conversations.items.list(conv.id))) == 5
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="standin", input="x", conversation="conv_missing")
    assert missing.value.body["param"] == "conversation"  # type: ignore[index]
