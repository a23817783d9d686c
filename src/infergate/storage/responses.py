"""Stored responses: the response objects, their input and output items, and background events.

Every row belongs to the key that created it; reads by another key, of an expired row, or of a
deleted one are all the same 404. Writes go through a GroupCommitter (many requests share one
transaction); reads run in threads. Conversations share the store (storage/conversations.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    text,
    update,
)

from infergate.config import float_env
from infergate.errors import InvalidRequest, NotFound
from infergate.storage.conversations import ConversationStore, append_items, conversation_items
from infergate.storage.db import BigId, metadata
from infergate.storage.group_commit import GroupCommitter, Rows
from infergate.storage.items import normalize_items, page, plausible_id

log = logging.getLogger("infergate.responses")
DAY_SECONDS = 86_400
ACTIVE = ("queued", "in_progress")

responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_uuid", String(36), nullable=False),
    Column("status", String(32), nullable=False),
    Column("previous_response_id", String(64), nullable=True),
    Column("conversation_id", String(64), nullable=True),
    Column("background", Boolean, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_responses_expires", "expires_ms"),
    Index("ix_responses_status", "background", "status"),
)
response_items = Table(
    "response_items",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("response_id", String(64), nullable=False),
    Column("kind", String(8), nullable=False),  # input | output
    Column("item_id", String(128), nullable=False),
    Column("item", Text, nullable=False),
    Index("ix_response_items_response", "response_id", "kind", "id"),
)
response_events = Table(
    "response_events",
    metadata,
    Column("response_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("event", Text, nullable=False),
)

INSERT_RESPONSE = insert(responses)
INSERT_ITEM = insert(response_items)
INSERT_EVENT = insert(response_events)

# The chain of a response, newest first: walked in the database in one query, however long.
CHAIN = text(
    """
    WITH RECURSIVE chain(id, prev, depth) AS (
        SELECT id, previous_response_id, 0 FROM responses
        WHERE id = :id AND key_uuid = :key AND expires_ms > :now
        UNION ALL
        SELECT r.id, r.previous_response_id, c.depth + 1 FROM responses r JOIN chain c ON r.id = c.prev
        WHERE r.key_uuid = :key AND r.expires_ms > :now AND c.depth < 100000
    )
    SELECT i.item FROM chain c JOIN response_items i ON i.response_id = c.id
    ORDER BY c.depth DESC, i.id
    """
)


@dataclass(frozen=True)
class StoreSettings:
    retention_seconds: float = 30 * DAY_SECONDS
    purge_interval: float = 3600.0
    stream_poll_seconds: float = 0.25  # a background stream's look for events written elsewhere

    @classmethod
    def from_env(cls) -> StoreSettings:
        days = float_env("INFERGATE_RESPONSE_RETENTION_DAYS", 30.0, minimum=0.0)
        return cls(
            retention_seconds=days * DAY_SECONDS if days > 0 else 100 * 365 * DAY_SECONDS,
            purge_interval=float_env("INFERGATE_RESPONSE_PURGE_INTERVAL", 3600.0, minimum=0.1),
            stream_poll_seconds=float_env("INFERGATE_BACKGROUND_POLL_SECONDS", 0.25, minimum=0.01),
        )


def now_ms() -> int:
    return int(time.time() * 1000)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def not_found(response_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param=param)


class ResponseStore:
    def __init__(self, engine: Engine, settings: StoreSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or StoreSettings()
        self.writer = GroupCommitter(engine, "responses-writer")
        self.conversations = ConversationStore(engine, self.writer, self._retention_ms)
        self._purger: asyncio.Task[None] | None = None

    @property
    def _retention_ms(self) -> int:
        return int(self.settings.retention_seconds * 1000)

    async def start(self) -> None:
        self._purger = asyncio.create_task(self._purge_forever())

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        await asyncio.to_thread(self.writer.close)

    async def _read(self, fn: Any, *args: Any) -> Any:
        def run() -> Any:
            with self.engine.connect() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)

    # --- writes ---------------------------------------------------------------------------------

    async def save(
        self,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        *,
        key_uuid: str,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        background: bool = False,
    ) -> None:
        """Store a new response with its input and output items; durable on return (the writes of
        concurrent saves share one transaction). With `conversation_id`, its items are appended to
        that conversation; a background response's only once it finishes."""
        inputs = normalize_items(input_items, "input")
        outputs = normalize_items(response.get("output") or [], "output")
        stamp = now_ms()
        row = {
            "id": response["id"],
            "key_uuid": key_uuid,
            "status": response.get("status") or "completed",
            "previous_response_id": previous_response_id,
            "conversation_id": conversation_id,
            "background": background,
            "body": dumps(response),
            "created_ms": stamp,
            "updated_ms": stamp,
            "expires_ms": stamp + self._retention_ms,
        }
        items = [
            {"response_id": row["id"], "kind": kind, "item_id": item["id"], "item": dumps(item)}
            for kind, group in (("input", inputs), ("output", outputs))
            for item in group
        ]
        then = None
        if conversation_id and row["status"] in ("completed", "incomplete"):
            retention = self._retention_ms

            def then(conn: Connection) -> None:
                append_items(conn, conversation_id, row["id"], inputs + outputs, retention)

        # plain inserts, merged with the other saves of the batch: one statement per table
        await self.writer.run(Rows([(INSERT_RESPONSE, [row]), (INSERT_ITEM, items)], then))

    async def finish(self, response: dict[str, Any], key_uuid: str) -> bool:
        """A background response's final state and output items, unless it was cancelled or failed
        meanwhile (then False: `cancelled` is final). Its input items keep their ids; its
        conversation, if any, gets its items now."""
        outputs = normalize_items(response.get("output") or [], "output")
        status = response.get("status") or "completed"
        body = dumps(response)
        rid = response["id"]

        def op(conn: Connection) -> bool:
            c, items = responses.c, response_items
            stmt = update(responses).where(c.id == rid, c.key_uuid == key_uuid, c.status.in_(ACTIVE))
            if not conn.execute(stmt.values(status=status, body=body, updated_ms=now_ms())).rowcount:
                return False
            conn.execute(delete(items).where(items.c.response_id == rid, items.c.kind == "output"))
            rows = [
                {"response_id": rid, "kind": "output", "item_id": i["id"], "item": dumps(i)} for i in outputs
            ]
            if rows:
                conn.execute(INSERT_ITEM, rows)
            conversation_id = conn.execute(select(c.conversation_id).where(c.id == rid)).scalar()
            if conversation_id and status in ("completed", "incomplete"):
                stored = select(items.c.item).where(items.c.response_id == rid, items.c.kind == "input")
                inputs = [orjson.loads(r[0]) for r in conn.execute(stored.order_by(items.c.id))]
                append_items(conn, conversation_id, rid, inputs + outputs, self._retention_ms)
            return True

        return await self.writer.run(op)

    async def delete(self, response_id: str, key_uuid: str) -> None:
        if not plausible_id(response_id):
            raise not_found(response_id[:128])

        def op(conn: Connection) -> int:
            found = conn.execute(
                delete(responses).where(
                    responses.c.id == response_id,
                    responses.c.key_uuid == key_uuid,
                    responses.c.expires_ms > now_ms(),
                )
            ).rowcount
            if found:
                conn.execute(delete(response_items).where(response_items.c.response_id == response_id))
                conn.execute(delete(response_events).where(response_events.c.response_id == response_id))
            return found

        if not await self.writer.run(op):
            raise not_found(response_id)

    # --- reads ----------------------------------------------------------------------------------

    async def row(self, response_id: str, key_uuid: str | None) -> dict[str, Any]:
        """The stored row (body parsed); `key_uuid=None` only for the background worker."""
        if not plausible_id(response_id):
            raise not_found(response_id[:128])

        def read(conn: Connection) -> Any:
            stmt = select(responses).where(responses.c.id == response_id, responses.c.expires_ms > now_ms())
            if key_uuid is not None:
                stmt = stmt.where(responses.c.key_uuid == key_uuid)
            return conn.execute(stmt).mappings().first()

        found = await self._read(read)
        if found is None:
            raise not_found(response_id)
        result = dict(found)
        result["body"] = orjson.loads(result["body"])
        return result

    async def get(self, response_id: str, key_uuid: str) -> dict[str, Any]:
        return (await self.row(response_id, key_uuid))["body"]

    async def load_history(self, response_id: str, key_uuid: str) -> list[dict[str, Any]]:
        """Every input and output item of the chain ending at `response_id`, oldest first."""
        try:
            head = await self.row(response_id, key_uuid)
        except NotFound:
            raise not_found(response_id, "previous_response_id") from None
        if head["status"] in ACTIVE:
            raise InvalidRequest(
                f"Response '{response_id}' is still {head['status']}; wait until it finishes.",
                param="previous_response_id",
            )

        def read(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(CHAIN, {"id": response_id, "key": key_uuid, "now": now_ms()})
            return [orjson.loads(r[0]) for r in rows]

        return await self._read(read)

    async def conversation_items(self, conversation_id: str, key_uuid: str) -> list[dict[str, Any]]:
        await self.conversations.get(conversation_id, key_uuid, param="conversation")
        return await self._read(conversation_items, conversation_id)

    async def input_items(
        self, response_id: str, key_uuid: str, *, after: str | None, limit: int, order: str
    ) -> dict[str, Any]:
        await self.row(response_id, key_uuid)
        t = response_items
        where = (t.c.response_id == response_id, t.c.kind == "input")
        return await self._read(page, t, where, after, limit, order)

    # --- background responses -------------------------------------------------------------------

    def append_events(self, response_id: str, events: list[dict[str, Any]]) -> asyncio.Future[Any]:
        """Queue the events' write; await the future for it to be committed."""
        rows = [{"response_id": response_id, "seq": e["sequence_number"], "event": dumps(e)} for e in events]
        return self.writer.submit(Rows([(INSERT_EVENT, rows)]))

    async def clear_events(self, response_id: str) -> None:
        t = response_events
        await self.writer.run(lambda conn: conn.execute(delete(t).where(t.c.response_id == response_id)))

    async def events_after(self, response_id: str, after: int) -> list[dict[str, Any]]:
        def read(conn: Connection) -> list[dict[str, Any]]:
            t = response_events
            stmt = select(t.c.event).where(t.c.response_id == response_id, t.c.seq > after).order_by(t.c.seq)
            return [orjson.loads(r[0]) for r in conn.execute(stmt)]

        return await self._read(read)

    async def update_row(self, response_id: str, *, only_active: bool = True, **values: Any) -> bool:
        if "body" in values:
            values["body"] = dumps(values["body"])
        values["updated_ms"] = now_ms()
        stmt = update(responses).where(responses.c.id == response_id)
        if only_active:
            stmt = stmt.where(responses.c.status.in_(ACTIVE))
        return bool(await self.writer.run(lambda conn: conn.execute(stmt.values(**values)).rowcount))

    async def active_background(self, idle_ms: int) -> list[dict[str, Any]]:
        """Background responses still queued or running, unchanged for `idle_ms`."""

        def read(conn: Connection) -> list[dict[str, Any]]:
            c = responses.c
            stmt = select(c.id, c.key_uuid, c.status, c.body).where(
                c.background.is_(True), c.status.in_(ACTIVE), c.updated_ms < now_ms() - idle_ms
            )
            return [dict(r) | {"body": orjson.loads(r["body"])} for r in conn.execute(stmt).mappings()]

        return await self._read(read)

    async def last_event(self, response_id: str) -> int:
        t = response_events
        stmt = select(func.max(t.c.seq)).where(t.c.response_id == response_id)
        found = await self._read(lambda conn: conn.execute(stmt).scalar())
        return -1 if found is None else int(found)

    # --- retention ------------------------------------------------------------------------------

    async def purge(self) -> int:
        """Delete expired responses (with their items and events) and conversations."""

        def op(conn: Connection) -> int:
            now = now_ms()
            expired = select(responses.c.id).where(responses.c.expires_ms <= now)
            conn.execute(delete(response_items).where(response_items.c.response_id.in_(expired)))
            conn.execute(delete(response_events).where(response_events.c.response_id.in_(expired)))
            # events a job wrote after its response was deleted
            conn.execute(
                delete(response_events).where(response_events.c.response_id.not_in(select(responses.c.id)))
            )
            count = conn.execute(delete(responses).where(responses.c.expires_ms <= now)).rowcount
            return count + self.conversations.purge(conn, now)

        return await self.writer.run(op)

    async def _purge_forever(self) -> None:
        while True:
            try:
                purged = await self.purge()
                if purged:
                    log.info("purged %d expired responses and conversations", purged)
            except Exception as exc:  # the database may be down for a while: try again later
                log.warning("purge of expired responses failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.purge_interval)
