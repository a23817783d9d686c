"""Stored responses through the real openai SDK against a real server: retrieve, delete,
input_items pagination, another key's 404, store: false, previous_response_id chains (across a
restart, and across two servers sharing PostgreSQL), and retention with purge."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response, ResponseItem
from pydantic import TypeAdapter

from tests.conftest import upstream_catalog
from tests.support.pg_database import pg_url_fixture  # noqa: F401 - the pg_url fixture
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

ITEM = TypeAdapter(ResponseItem)


def strict(response: Response) -> Response:
    """The answer parses as the SDK's Response in strict mode."""
    return Response.model_validate(response.model_dump(mode="json"), strict=True)


def messages_sent(upstream: StandInUpstream, marker: str) -> list[dict[str, Any]]:
    """The chat messages of the last upstream request whose last message carries `marker`."""
    for body in reversed(upstream.requests):
        if marker in str(body.get("messages", [])[-1:]):
            return body["messages"]
    raise AssertionError(f"no upstream request ended with {marker!r}")


def test_retrieve_delete_and_another_keys_404(server: ServerProcess) -> None:
    owner, other = server.openai_client("store-owner"), server.openai_client("store-other")
    created = owner.responses.create(model="standin", input="What is the capital of France?")
    got = strict(owner.responses.retrieve(created.id))
    assert got.id == created.id and got.status == "completed"
    assert got.output_text == created.output_text == "Paris is the capital of France."
    for call in (
        lambda: other.responses.retrieve(created.id),
        lambda: other.responses.input_items.list(created.id),
        lambda: other.responses.delete(created.id),
        lambda: other.responses.create(model="standin", input="hi", previous_response_id=created.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert owner.responses.retrieve(created.id).id == created.id  # the other key's delete did nothing
    owner.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        owner.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as gone:
        owner.responses.create(model="standin", input="again", previous_response_id=created.id)
    assert gone.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        owner.responses.delete(created.id)


def test_store_false_is_not_retrievable(server: ServerProcess) -> None:
    client = server.openai_client("store-false")
    created = client.responses.create(model="standin", input="hello", store=False)
    assert created.status == "completed"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="standin", input="next", previous_response_id=created.id)


def test_input_items_cursor_pagination(server: ServerProcess) -> None:
    client = server.openai_client("store-items")
    texts = [f"message {i}" for i in range(7)]
    created = client.responses.create(model="standin", input=[{"role": "user", "content": t} for t in texts])
    # the SDK follows the cursor (after = last id) page by page
    walked = list(client.responses.input_items.list(created.id, limit=3, order="asc"))
    assert [i.content[0].text for i in walked] == texts  # type: ignore[union-attr]
    for item in walked:
        ITEM.validate_python(item.model_dump(mode="json"), strict=True)
        assert item.type == "message" and item.id.startswith("msg_")
    page = client.responses.input_items.list(created.id, limit=2)  # newest first by default
    assert [i.content[0].text for i in page.data] == texts[:-3:-1]  # type: ignore[union-attr]
    assert page.has_more is True
    after = client.responses.input_items.list(created.id, limit=2, after=page.data[-1].id)
    assert [i.content[0].text for i in after.data] == [texts[4], texts[3]]  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.input_items.list(created.id, limit=0)
    assert "limit" in str(bad.value)


def test_previous_response_id_replays_every_item_type(
    server: ServerProcess, upstream: StandInUpstream
) -> None:
    client = server.openai_client("store-chain")
    first = client.responses.create(model="standin", instructions="Be brief.", input="My name is Ada.")
    tool_turn = [
        {"type": "function_call", "call_id": "call_w", "name": "weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_w", "output": "sunny"},
        {"role": "user", "content": "What is my name, and the weather?"},
    ]
    second = client.responses.create(model="standin", input=tool_turn, previous_response_id=first.id)  # type: ignore[arg-type]
    third = client.responses.create(
        model="standin", input="Thanks, marker-3.", previous_response_id=second.id
    )
    assert strict(third).previous_response_id == second.id
    sent = messages_sent(upstream, "marker-3")
    roles = [m["role"] for m in sent]
    # instructions are not carried over (OpenAI's rule); every earlier item is (the function call
    # joins the assistant message before it, as chat wants)
    assert roles == ["user", "assistant", "tool", "user", "assistant", "user"]
    assert "My name is Ada." in str(sent[0]["content"])
    assert "Paris is the capital" in str(sent[1]["content"])
    assert sent[1]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    assert sent[2]["tool_call_id"] == "call_w" and "sunny" in str(sent[2]["content"])
    assert "my name, and the weather" in str(sent[3]["content"]) and "Paris" in str(sent[4]["content"])
    kinds = [i.type for i in client.responses.input_items.list(second.id, order="asc")]
    assert kinds == ["function_call", "function_call_output", "message"]


def test_previous_response_id_across_a_restart(
    fresh_server: ServerProcess, upstream: StandInUpstream
) -> None:
    fresh_server.start()
    key = fresh_server.create_key("restart")["secret_key"]
    client = openai.OpenAI(base_url=f"{fresh_server.url}/v1/", api_key=key, max_retries=0)
    first = client.responses.create(model="standin", input="Remember the word heliotrope.")
    assert fresh_server.stop() == 0
    fresh_server.start()
    client = openai.OpenAI(base_url=f"{fresh_server.url}/v1/", api_key=key, max_retries=0)
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.create(model="standin", input="Which word? after-restart", previous_response_id=first.id)
    sent = messages_sent(upstream, "after-restart")
    assert "heliotrope" in str(sent[0]["content"]) and sent[1]["role"] == "assistant"


def test_two_servers_share_responses_on_postgres(
    pg_url: str, upstream: StandInUpstream, tmp_path: Path
) -> None:
    catalog = upstream_catalog(upstream.base_url)
    env = {"INFERGATE_DATABASE_URL": pg_url}
    one = ServerProcess(tmp_path / "one", catalog, env=env).start()
    two = ServerProcess(tmp_path / "two", catalog, env=env).start()
    try:
        key = one.create_key("shared")["secret_key"]
        a = openai.OpenAI(base_url=f"{one.url}/v1/", api_key=key, max_retries=0)
        b = openai.OpenAI(base_url=f"{two.url}/v1/", api_key=key, max_retries=0)
        first = a.responses.create(model="standin", input="The code word is marigold.")
        assert strict(b.responses.retrieve(first.id)).output_text == first.output_text
        second = b.responses.create(model="standin", input="Code word? on-two", previous_response_id=first.id)
        sent = messages_sent(upstream, "on-two")
        assert "marigold" in str(sent[0]["content"])
        assert [i.content[0].text for i in a.responses.input_items.list(second.id)] == [  # type: ignore[union-attr]
            "Code word? on-two"
        ]
        b.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(first.id)
    finally:
        one.stop()
        two.stop()


def test_retention_expires_and_purges(upstream: StandInUpstream, tmp_path: Path) -> None:
    env = {"INFERGATE_RESPONSE_RETENTION_DAYS": str(3 / 86400), "INFERGATE_RESPONSE_PURGE_INTERVAL": "0.5"}
    server = ServerProcess(tmp_path / "retention", upstream_catalog(upstream.base_url), env=env).start()
    try:
        client = server.openai_client("retention")
        created = client.responses.create(model="standin", input="short-lived")
        assert client.responses.retrieve(created.id).id == created.id
        deadline = time.monotonic() + 30
        while True:  # gone for the API once expired, then gone from the database once purged
            try:
                client.responses.retrieve(created.id)
            except openai.NotFoundError:
                with sqlite3.connect(server.data_dir / "infergate.db") as db:
                    left = db.execute("SELECT count(*) FROM responses").fetchone()[0]
                    left += db.execute("SELECT count(*) FROM response_items").fetchone()[0]
                if left == 0:
                    break
            assert time.monotonic() < deadline, "the expired response was not purged"
            time.sleep(0.1)
    finally:
        server.stop()
