"""GET/DELETE /v1/responses/{id}, input_items, cancel: the durable store's routes (issue 10).

A stored response is visible only to the key that created it: another key, an expired or a
deleted response, and a `store: false` one (never stored) all get the same 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import authenticate, json_response, platform_of
from infergate.api.streaming import SSEResponse, stream_error_event
from infergate.responses.background import cancel_background, open_stream
from infergate.schemas.common import error_responses
from infergate.schemas.conversations import ItemList
from infergate.storage.keys import KeyRecord

router = APIRouter(prefix="/responses", tags=["responses"])
ERRORS = error_responses(400, 401, 404)


@router.get(
    "/{response_id}",
    responses=ERRORS,
    summary="Get a stored response; stream=true replays a background response's events",
)
async def retrieve_response(
    request: Request,
    response_id: str,
    stream: bool = Query(False),
    starting_after: int | None = Query(None, ge=-1, le=2**31),
    key: KeyRecord = Depends(authenticate),  # a dependency: a 401 comes before any query 400
) -> Response:
    platform = platform_of(request)
    if not stream:
        return json_response(await platform.responses.get(response_id, key.uuid))
    after = -1 if starting_after is None else starting_after
    # a 404 or 400 answers as JSON, before the stream starts
    events = await open_stream(platform, response_id, key.uuid, after)
    return SSEResponse(_sse(events, request.scope["state"].get("request_id", "")))


async def _sse(events: AsyncIterator[dict[str, Any]], request_id: str) -> Any:
    try:
        async for event in events:
            yield _frame(event)
    except Exception as exc:  # after the stream started: an error event, as every stream does
        yield stream_error_event(exc, request_id)
    finally:
        await events.aclose()


def _frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


@router.delete("/{response_id}", responses=ERRORS, summary="Delete a stored response")
async def delete_response(request: Request, response_id: str) -> Response:
    key = await authenticate(request)
    platform = platform_of(request)
    row = await platform.responses.row(response_id, key.uuid)
    if row["background"] and row["status"] in ("queued", "in_progress"):
        await cancel_background(platform, response_id, key.uuid)  # its job stops writing events
    await platform.responses.delete(response_id, key.uuid)
    return json_response({"id": response_id, "object": "response", "deleted": True})


@router.get(
    "/{response_id}/input_items",
    response_model=ItemList,
    responses=ERRORS,
    summary="List a stored response's input items (cursor pagination)",
)
async def list_input_items(
    request: Request,
    response_id: str,
    after: str | None = Query(None, max_length=128),
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("desc"),
    key: KeyRecord = Depends(authenticate),  # a dependency: a 401 comes before any query 400
) -> Response:
    store = platform_of(request).responses
    return json_response(
        await store.input_items(response_id, key.uuid, after=after, limit=limit, order=order)
    )


@router.post("/{response_id}/cancel", responses=ERRORS, summary="Cancel a background response")
async def cancel_response(request: Request, response_id: str) -> Response:
    key = await authenticate(request)
    return json_response(await cancel_background(platform_of(request), response_id, key.uuid))
