"""Conversations: a key's named list of items that responses read from and append to.

A conversation expires `retention` after its last activity (creation, new items, a response in
it), then it is purged with its items. Another key's conversation is a 404, like a missing one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)

from infergate.errors import NotFound
from infergate.storage.db import BigId, metadata
from infergate.storage.group_commit import GroupCommitter
from infergate.storage.items import new_id, normalize_items, page, plausible_id

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_uuid", String(36), nullable=False),
    Column("metadata", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_conversations_expires", "expires_ms"),
)
conversation_items_table = Table(
    "conversation_items",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("conversation_id", String(64), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("response_id", String(64), nullable=True),
    Column("item", Text, nullable=False),
    Index("ix_conversation_items_conv", "conversation_id", "id"),
    Index("ix_conversation_items_response", "response_id"),
)
MAX_ITEMS_PER_CALL = 20


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def not_found(conversation_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"Conversation with id '{conversation_id}' not found.", param=param)


def item_not_found(item_id: str) -> NotFound:
    return NotFound(f"Item with id '{item_id}' not found.", param="item_id")


def as_object(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "conversation",
        "created_at": row["created_ms"] // 1000,
        "metadata": orjson.loads(row["metadata"]),
    }


def append_items(
    conn: Connection,
    conversation_id: str,
    response_id: str | None,
    items: list[dict[str, Any]],
    retention_ms: int,
) -> None:
    """Append items (in the caller's transaction) and extend the conversation's life. A response's
    items are appended once, however often the response is saved."""
    t = conversation_items_table
    if response_id is not None:
        exists = select(t.c.id).where(t.c.response_id == response_id).limit(1)
        if conn.execute(exists).first() is not None:
            return
    now = _now_ms()
    live = conn.execute(
        update(conversations)
        .where(conversations.c.id == conversation_id, conversations.c.expires_ms > now)
        .values(expires_ms=now + retention_ms)
    ).rowcount
    if live and items:  # a conversation deleted meanwhile takes nothing
        rows = [
            {
                "conversation_id": conversation_id,
                "item_id": i["id"],
                "response_id": response_id,
                "item": _dumps(i),
            }
            for i in items
        ]
        conn.execute(insert(t), rows)


def conversation_items(conn: Connection, conversation_id: str) -> list[dict[str, Any]]:
    t = conversation_items_table
    stmt = select(t.c.item).where(t.c.conversation_id == conversation_id).order_by(t.c.id)
    return [orjson.loads(r[0]) for r in conn.execute(stmt)]


class ConversationStore:
    def __init__(self, engine: Engine, writer: GroupCommitter, retention_ms: int) -> None:
        self.engine = engine
        self.writer = writer
        self.retention_ms = retention_ms

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with self.engine.connect() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)

    def _live(self, conversation_id: str, key_uuid: str, param: str | None = None) -> tuple[Any, ...]:
        if not plausible_id(conversation_id):
            raise not_found(conversation_id[:128], param)
        c = conversations.c
        return (c.id == conversation_id, c.key_uuid == key_uuid, c.expires_ms > _now_ms())

    async def create(
        self, key_uuid: str, meta: dict[str, str], items: list[dict[str, Any]]
    ) -> dict[str, Any]:
        items = normalize_items(items, "items")
        now = _now_ms()
        row = {
            "id": new_id("conv"),
            "key_uuid": key_uuid,
            "metadata": _dumps(meta),
            "created_ms": now,
            "expires_ms": now + self.retention_ms,
        }

        def op(conn: Connection) -> None:
            conn.execute(insert(conversations).values(row))
            append_items(conn, row["id"], None, items, self.retention_ms)

        await self.writer.run(op)
        return as_object(row)

    async def get(self, conversation_id: str, key_uuid: str, param: str | None = None) -> dict[str, Any]:
        where = self._live(conversation_id, key_uuid, param)
        row = await self._read(
            lambda conn: conn.execute(select(conversations).where(*where)).mappings().first()
        )
        if row is None:
            raise not_found(conversation_id, param)
        return as_object(row)

    async def update(self, conversation_id: str, key_uuid: str, meta: dict[str, str]) -> dict[str, Any]:
        where = self._live(conversation_id, key_uuid)
        stmt = update(conversations).where(*where).values(metadata=_dumps(meta))
        if not await self.writer.run(lambda conn: conn.execute(stmt).rowcount):
            raise not_found(conversation_id)
        return await self.get(conversation_id, key_uuid)

    async def delete(self, conversation_id: str, key_uuid: str) -> dict[str, Any]:
        where = self._live(conversation_id, key_uuid)

        def op(conn: Connection) -> int:
            found = conn.execute(delete(conversations).where(*where)).rowcount
            if found:
                t = conversation_items_table
                conn.execute(delete(t).where(t.c.conversation_id == conversation_id))
            return found

        if not await self.writer.run(op):
            raise not_found(conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def add_items(
        self, conversation_id: str, key_uuid: str, items: list[dict[str, Any]]
    ) -> dict[str, Any]:
        items = normalize_items(items, "items")
        await self.get(conversation_id, key_uuid)
        await self.writer.run(
            lambda conn: append_items(conn, conversation_id, None, items, self.retention_ms)
        )
        return {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"],
            "last_id": items[-1]["id"],
            "has_more": False,
        }

    async def list_items(
        self, conversation_id: str, key_uuid: str, *, after: str | None, limit: int, order: str
    ) -> dict[str, Any]:
        await self.get(conversation_id, key_uuid)
        t = conversation_items_table
        return await self._read(page, t, (t.c.conversation_id == conversation_id,), after, limit, order)

    async def get_item(self, conversation_id: str, key_uuid: str, item_id: str) -> dict[str, Any]:
        await self.get(conversation_id, key_uuid)
        if not plausible_id(item_id):
            raise item_not_found(item_id[:128])
        t = conversation_items_table
        stmt = select(t.c.item).where(t.c.conversation_id == conversation_id, t.c.item_id == item_id).limit(1)
        found = await self._read(lambda conn: conn.execute(stmt).scalar())
        if found is None:
            raise item_not_found(item_id)
        return orjson.loads(found)

    async def delete_item(self, conversation_id: str, key_uuid: str, item_id: str) -> dict[str, Any]:
        conversation = await self.get(conversation_id, key_uuid)
        if not plausible_id(item_id):
            raise item_not_found(item_id[:128])
        t = conversation_items_table
        stmt = delete(t).where(t.c.conversation_id == conversation_id, t.c.item_id == item_id)
        if not await self.writer.run(lambda conn: conn.execute(stmt).rowcount):
            raise item_not_found(item_id)
        return conversation

    def purge(self, conn: Connection, now: int) -> int:
        """Delete expired conversations and their items (in the caller's transaction)."""
        expired = select(conversations.c.id).where(conversations.c.expires_ms <= now)
        t = conversation_items_table
        conn.execute(delete(t).where(t.c.conversation_id.in_(expired)))
        return conn.execute(delete(conversations).where(conversations.c.expires_ms <= now)).rowcount
