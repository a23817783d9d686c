"""/v1/conversations: create, retrieve, update, delete, and their items (OpenAI's shapes).

A conversation and its items are visible only to the key that created it (another key: 404).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import authenticate, json_body, json_response, platform_of, validate
from infergate.schemas.common import error_responses
from infergate.schemas.conversations import (
    Conversation,
    ConversationCreate,
    ConversationDeleted,
    ConversationUpdate,
    ItemList,
    ItemsCreate,
)
from infergate.storage.items import normalize_items
from infergate.storage.keys import KeyRecord

router = APIRouter(prefix="/conversations", tags=["conversations"])
ERRORS = error_responses(400, 401, 404, 413)


def _body_doc(model: type) -> dict:
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.post(
    "",
    response_model=Conversation,
    responses=ERRORS,
    openapi_extra=_body_doc(ConversationCreate),
    summary="Create a conversation, optionally with up to 20 items",
)
async def create_conversation(request: Request) -> Response:
    key = await authenticate(request)
    raw = await request.body()
    params = validate(ConversationCreate, await json_body(request) if raw.strip() else {})
    items = normalize_items(params.items or [], "items")
    store = platform_of(request).responses.conversations
    return json_response(await store.create(key.uuid, params.metadata or {}, items))


@router.get("/{conversation_id}", response_model=Conversation, responses=ERRORS, summary="Get a conversation")
async def retrieve_conversation(request: Request, conversation_id: str) -> Response:
    key = await authenticate(request)
    return json_response(await platform_of(request).responses.conversations.get(conversation_id, key.uuid))


@router.post(
    "/{conversation_id}",
    response_model=Conversation,
    responses=ERRORS,
    openapi_extra=_body_doc(ConversationUpdate),
    summary="Replace a conversation's metadata",
)
async def update_conversation(request: Request, conversation_id: str) -> Response:
    key = await authenticate(request)
    params = validate(ConversationUpdate, await json_body(request))
    store = platform_of(request).responses.conversations
    return json_response(await store.update(conversation_id, key.uuid, params.metadata or {}))


@router.delete(
    "/{conversation_id}",
    response_model=ConversationDeleted,
    responses=ERRORS,
    summary="Delete a conversation",
)
async def delete_conversation(request: Request, conversation_id: str) -> Response:
    key = await authenticate(request)
    return json_response(await platform_of(request).responses.conversations.delete(conversation_id, key.uuid))


@router.post(
    "/{conversation_id}/items",
    response_model=ItemList,
    responses=ERRORS,
    openapi_extra=_body_doc(ItemsCreate),
    summary="Add up to 20 items to a conversation",
)
async def add_items(request: Request, conversation_id: str) -> Response:
    key = await authenticate(request)
    params = validate(ItemsCreate, await json_body(request))
    items = normalize_items(params.items, "items")
    store = platform_of(request).responses.conversations
    return json_response(await store.add_items(conversation_id, key.uuid, items))


@router.get(
    "/{conversation_id}/items",
    response_model=ItemList,
    responses=ERRORS,
    summary="List a conversation's items",
)
async def list_items(
    request: Request,
    conversation_id: str,
    after: str | None = Query(None, max_length=128),
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("desc"),
    key: KeyRecord = Depends(authenticate),  # a dependency: a 401 comes before any query 400
) -> Response:
    store = platform_of(request).responses.conversations
    return json_response(
        await store.list_items(conversation_id, key.uuid, after=after, limit=limit, order=order)
    )


@router.get("/{conversation_id}/items/{item_id}", responses=ERRORS, summary="Get one item of a conversation")
async def retrieve_item(request: Request, conversation_id: str, item_id: str) -> Response:
    key = await authenticate(request)
    store = platform_of(request).responses.conversations
    return json_response(await store.get_item(conversation_id, key.uuid, item_id))


@router.delete(
    "/{conversation_id}/items/{item_id}",
    response_model=Conversation,
    responses=ERRORS,
    summary="Delete one item of a conversation",
)
async def delete_item(request: Request, conversation_id: str, item_id: str) -> Response:
    key = await authenticate(request)
    store = platform_of(request).responses.conversations
    return json_response(await store.delete_item(conversation_id, key.uuid, item_id))
