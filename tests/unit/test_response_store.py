"""The response store on real databases (SQLite, and PostgreSQL when it is there): saving and
reading back, another key's 404, chains of every item type, cursor pagination, group commit,
retention, conversations, and a cancelled background response that a late result cannot undo."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, func, select

from infergate.errors import InvalidRequest, NotFound
from infergate.storage.conversations import conversation_items_table, conversations
from infergate.storage.db import open_database
from infergate.storage.responses import ResponseStore, StoreSettings, response_items, responses

PG_ADMIN = "postgresql://127.0.0.1:5432/test"
KEY, OTHER = "key-a", "key-b"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        db = open_database(f"sqlite:///{tmp_path / 'store.db'}")
        yield db
        db.dispose()
        return
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (database 'test')")
    name = f"infergate_store_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    db = open_database(f"postgresql+psycopg://{admin.info.user}@127.0.0.1:5432/{name}")
    try:
        yield db
    finally:
        db.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def response(rid: str, output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": rid, "object": "response", "status": status, "model": "m", "output": output}


def message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": text}


def answer(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{uuid.uuid4().hex}",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def test_save_get_and_another_keys_404(engine: Engine) -> None:
    async def go() -> None:
        store = ResponseStore(engine)
        await store.save(response("resp_1", [answer("hi")]), [message("user", "hello")], key_uuid=KEY)
        got = await store.get("resp_1", KEY)
        assert got["output"][0]["content"][0]["text"] == "hi"
        for key, rid in ((OTHER, "resp_1"), (KEY, "resp_missing")):
            with pytest.raises(NotFound):
                await store.get(rid, key)
        with pytest.raises(NotFound):
            await store.delete("resp_1", OTHER)
        await store.delete("resp_1", KEY)
        with pytest.raises(NotFound):
            await store.get("resp_1", KEY)
        await asyncio.to_thread(store.writer.close)

    run(go())
    with engine.connect() as conn:  # the items went with it
        assert conn.execute(select(func.count()).select_from(response_items)).scalar() == 0


def test_history_rebuilds_the_whole_chain_with_every_item_type(engine: Engine) -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'}
    reasoning = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "hm"}],
    }
    mcp_list = {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "s", "tools": []}
    mcp_call = {
        "type": "mcp_call",
        "id": "mcp_1",
        "server_label": "s",
        "name": "add",
        "arguments": "{}",
        "output": "3",
    }
    output = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}

    async def go() -> list[dict[str, Any]]:
        store = ResponseStore(engine)
        await store.save(
            response("r1", [reasoning, call]),
            [message("system", "be brief"), message("user", "weather?")],
            key_uuid=KEY,
        )
        await store.save(
            response("r2", [mcp_list, mcp_call, answer("sunny, 3")]),
            [output],
            key_uuid=KEY,
            previous_response_id="r1",
        )
        await store.save(
            response("r3", [answer("bye")]),
            [message("user", "thanks")],
            key_uuid=KEY,
            previous_response_id="r2",
        )
        history = await store.load_history("r3", KEY)
        with pytest.raises(NotFound) as missing:
            await store.load_history("r3", OTHER)
        assert missing.value.param == "previous_response_id"
        await store.delete("r3", KEY)
        with pytest.raises(NotFound):
            await store.load_history("r3", KEY)
        assert [i["type"] for i in await store.load_history("r2", KEY)][-1] == "message"
        await asyncio.to_thread(store.writer.close)
        return history

    history = run(go())
    kinds = [(i["type"], i.get("role")) for i in history]
    assert kinds == [
        ("message", "system"),
        ("message", "user"),
        ("reasoning", None),
        ("function_call", None),
        ("function_call_output", None),
        ("mcp_list_tools", None),
        ("mcp_call", None),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
    ]
    assert history[1]["content"] == [{"type": "input_text", "text": "weather?"}]
    assert history[3]["arguments"] == '{"city":"Paris"}' and history[3]["id"].startswith("fc_")
    assert all(isinstance(i["id"], str) and i["id"] for i in history)


def test_input_items_cursor_pagination(engine: Engine) -> None:
    items = [message("user", f"m{i}") for i in range(7)]

    async def go() -> None:
        store = ResponseStore(engine)
        await store.save(response("r", []), items, key_uuid=KEY)
        texts: list[str] = []
        after = None
        while True:
            page = await store.input_items("r", KEY, after=after, limit=3, order="asc")
            texts += [i["content"][0]["text"] for i in page["data"]]
            assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert texts == [f"m{i}" for i in range(7)]
        newest = await store.input_items("r", KEY, after=None, limit=2, order="desc")
        assert [i["content"][0]["text"] for i in newest["data"]] == ["m6", "m5"] and newest["has_more"]
        with pytest.raises(InvalidRequest) as bad:
            await store.input_items("r", KEY, after="msg_nope", limit=2, order="desc")
        assert bad.value.param == "after"
        with pytest.raises(NotFound):
            await store.input_items("r", OTHER, after=None, limit=2, order="desc")
        await asyncio.to_thread(store.writer.close)

    run(go())


def test_concurrent_saves_share_transactions(engine: Engine) -> None:
    commits = 0

    def count(_conn: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine, "commit", count)

    async def go() -> None:
        store = ResponseStore(engine)
        await asyncio.gather(
            *(
                store.save(response(f"c{i}", [answer(str(i))]), [message("user", str(i))], key_uuid=KEY)
                for i in range(200)
            )
        )
        got = await asyncio.gather(*(store.get(f"c{i}", KEY) for i in range(200)))
        assert [g["output"][0]["content"][0]["text"] for g in got] == [str(i) for i in range(200)]
        await asyncio.to_thread(store.writer.close)

    run(go())
    assert commits < 50, f"{commits} commits for 200 saves: the writes were not grouped"


def test_a_bad_write_fails_alone(engine: Engine) -> None:
    async def go() -> None:
        store = ResponseStore(engine)
        await store.save(response("dup", []), [], key_uuid=KEY)
        # the same id under another key: the insert collides, the other saves of its batch commit
        results = await asyncio.gather(
            store.save(response("dup", []), [], key_uuid=OTHER),
            *(store.save(response(f"ok{i}", []), [], key_uuid=KEY) for i in range(20)),
            return_exceptions=True,
        )
        assert isinstance(results[0], Exception)
        assert all(r is None for r in results[1:])
        assert (await store.get("ok19", KEY))["id"] == "ok19"
        await asyncio.to_thread(store.writer.close)

    run(go())


def test_expired_rows_are_unreadable_then_purged(engine: Engine) -> None:
    async def go() -> None:
        store = ResponseStore(engine, StoreSettings(retention_seconds=2.0))
        await store.save(response("old", [answer("x")]), [message("user", "x")], key_uuid=KEY)
        conv = await store.conversations.create(KEY, {}, [])
        assert (await store.get("old", KEY))["id"] == "old"
        deadline = time.monotonic() + 10

        async def expired(read: Any) -> bool:
            try:
                await read()
            except NotFound:
                return True
            return False

        while not (await expired(lambda: store.get("old", KEY))) or not (
            await expired(lambda: store.conversations.get(conv["id"], KEY))
        ):  # no fixed sleep: poll until the retention has passed for both
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await store.purge() == 2
        await asyncio.to_thread(store.writer.close)

    run(go())
    with engine.connect() as conn:
        for table in (responses, response_items, conversations, conversation_items_table):
            assert conn.execute(select(func.count()).select_from(table)).scalar() == 0, table.name


def test_conversation_gets_a_responses_items_once(engine: Engine) -> None:
    async def go() -> None:
        store = ResponseStore(engine)
        conv = await store.conversations.create(KEY, {"topic": "t"}, [message("user", "first")])
        with pytest.raises(NotFound):
            await store.conversation_items(conv["id"], OTHER)
        out = response("rc", [answer("reply")])
        await store.save(out, [message("user", "second")], key_uuid=KEY, conversation_id=conv["id"])
        # a background response joins the conversation when it finishes, once
        queued = response("rb", [], status="queued")
        await store.save(
            queued, [message("user", "third")], key_uuid=KEY, conversation_id=conv["id"], background=True
        )
        assert len(await store.conversation_items(conv["id"], KEY)) == 3
        assert await store.finish(response("rb", [answer("late reply")]), KEY)
        assert not await store.finish(response("rb", [answer("again")]), KEY)
        items = await store.conversation_items(conv["id"], KEY)
        assert [i["content"][0]["text"] for i in items] == ["first", "second", "reply", "third", "late reply"]
        page = await store.conversations.list_items(conv["id"], KEY, after=None, limit=3, order="desc")
        assert [i["content"][0]["text"] for i in page["data"]] == ["late reply", "third", "reply"]
        await asyncio.to_thread(store.writer.close)

    run(go())


def test_a_cancelled_background_response_stays_cancelled(engine: Engine) -> None:
    async def go() -> None:
        store = ResponseStore(engine)
        queued = response("bg", [], status="queued")
        await store.save(queued, [message("user", "go")], key_uuid=KEY, background=True)
        inputs = await store.input_items("bg", KEY, after=None, limit=5, order="asc")
        assert await store.update_row("bg", status="cancelled", body=queued | {"status": "cancelled"})
        assert not await store.finish(response("bg", [answer("late")]), KEY)
        assert (await store.get("bg", KEY))["status"] == "cancelled"
        # a running one finishes: output items replaced, input items keep their ids
        await store.save(
            response("bg2", [], status="in_progress"), [message("user", "go")], key_uuid=KEY, background=True
        )
        before = await store.input_items("bg2", KEY, after=None, limit=5, order="asc")
        assert await store.finish(response("bg2", [answer("done")]), KEY)
        after = await store.input_items("bg2", KEY, after=None, limit=5, order="asc")
        assert before["data"] == after["data"] and inputs["data"][0]["content"][0]["text"] == "go"
        assert (await store.load_history("bg2", KEY))[-1]["content"][0]["text"] == "done"
        await asyncio.to_thread(store.writer.close)

    run(go())


def test_items_are_checked_and_normalized() -> None:
    from infergate.storage.items import normalize_items

    with pytest.raises(InvalidRequest) as bad:
        normalize_items([message("user", "ok"), {"role": "robot", "content": "x"}])
    assert bad.value.param == "items[1].role"
    with pytest.raises(InvalidRequest) as bad:
        normalize_items([{"type": "function_call", "name": "f", "arguments": "{}"}])
    assert bad.value.param == "items[0].call_id"
    with pytest.raises(InvalidRequest) as bad:
        normalize_items([{"type": "teleport"}])
    assert bad.value.param == "items[0].type"
    [item] = normalize_items([message("assistant", "hi")])
    assert item["content"] == [{"type": "output_text", "text": "hi", "annotations": []}]
    assert item["id"].startswith("msg_") and item["status"] == "completed"
    assert normalize_items([item]) == [item]  # normalizing twice changes nothing


def test_ids_no_column_can_hold_are_a_404_or_a_400(engine: Engine) -> None:
    """A NUL (which PostgreSQL refuses) or an over-long id never reaches the database as an error."""

    async def go() -> None:
        store = ResponseStore(engine)
        await store.save(response("ok", []), [message("user", "x")], key_uuid=KEY)
        conv = await store.conversations.create(KEY, {}, [message("user", "x")])
        for bad in ("a\x00b", "x" * 129):
            for call in (
                store.get(bad, KEY),
                store.delete(bad, KEY),
                store.load_history(bad, KEY),
                store.conversations.get(bad, KEY),
                store.conversations.delete(bad, KEY),
                store.conversations.get_item(conv["id"], KEY, bad),
            ):
                with pytest.raises(NotFound):
                    await call
            with pytest.raises(InvalidRequest) as cursor:
                await store.input_items("ok", KEY, after=bad, limit=2, order="asc")
            assert cursor.value.param == "after"
            with pytest.raises(InvalidRequest) as item:
                await store.conversations.add_items(
                    conv["id"], KEY, [{"id": bad, "role": "user", "content": "x"}]
                )
            assert item.value.param == "items[0].id"
        await asyncio.to_thread(store.writer.close)

    run(go())
