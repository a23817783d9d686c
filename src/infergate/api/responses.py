"""POST /v1/responses: validate, load the conversation, run the response (JSON or SSE).

The work is responses/runner.py's; this module is HTTP only: the key, the body, the history
(`previous_response_id` or `conversation` from the store), background hand-off, and how the
runner's events reach the client.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import authenticate, json_body, json_response, platform_of, request_id_of, validate
from infergate.api.streaming import SSEResponse, run_until_disconnect, stream_error_event
from infergate.errors import InvalidRequest, NotFound
from infergate.responses.background import open_stream, start_background
from infergate.responses.runner import run_response
from infergate.responses.translate import check_call_outputs, secret_id
from infergate.schemas.common import INFERENCE_ERRORS
from infergate.schemas.responses import ResponsesRequest

router = APIRouter()

OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ResponsesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            }
        },
    }
}
FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


@router.post(
    "/responses",
    responses=INFERENCE_ERRORS,
    openapi_extra=OPENAPI_BODY,
    summary="Create a model response (OpenAI Responses API; SSE when stream is true)",
)
async def create_response(request: Request) -> Response:
    started = time.perf_counter()
    key = await authenticate(request)
    body = await json_body(request)
    params = _validate(body)
    platform = platform_of(request)
    request.scope["state"]["model"] = params.model
    request_id = request_id_of(request)
    history = await _history(platform, params, key.uuid)
    check_call_outputs(history, params)  # before a background job or a bill exists
    response_id = secret_id("resp")
    if params.background:
        return await _background(platform, params, body, key.uuid, response_id, history)
    events = run_response(
        platform,
        params,
        body,
        key_uuid=key.uuid,
        request_id=request_id,
        response_id=response_id,
        history=history,
        started=started,
    )
    if params.stream:
        try:  # the first event before answering 200: early failures get their real status
            first = await run_until_disconnect(request.receive, anext(events))
        except BaseException:
            await events.aclose()
            raise
        return SSEResponse(_sse(events, first, request_id))
    final = await run_until_disconnect(request.receive, _last(events))
    return json_response(final)


# Tags pydantic puts in an error's location after a tagged union's index ("tools.0.function.name").
_TAGS = re.compile(
    r"(?<=\.)(?:function|mcp|message|function_call|function_call_output|reasoning|mcp_list_tools|mcp_call"
    r"|text|json_object|json_schema|input_text|input_image|output_text|refusal)\."
)


def _validate(body: dict[str, Any]) -> ResponsesRequest:
    try:
        return validate(ResponsesRequest, body)
    except InvalidRequest as exc:
        if exc.param:
            tagged = exc.param
            exc.param = _TAGS.sub("", tagged)
            exc.message = exc.message.replace(tagged, exc.param, 1)
        raise


async def _history(platform: Any, params: ResponsesRequest, key_uuid: str) -> list[dict[str, Any]]:
    """The earlier items this response continues from (the store's, oldest first)."""
    if not params.previous_response_id and not params.conversation_id:
        return []
    store = getattr(platform, "responses", None)
    if store is None:
        param = "previous_response_id" if params.previous_response_id else "conversation"
        raise NotFound("No response store is configured on this server.", param=param)
    if params.previous_response_id:
        return await store.load_history(params.previous_response_id, key_uuid)
    return await store.conversation_items(params.conversation_id, key_uuid)


async def _background(
    platform: Any,
    params: ResponsesRequest,
    body: dict[str, Any],
    key_uuid: str,
    response_id: str,
    history: list[dict[str, Any]],
) -> Response:
    queued = await start_background(
        platform, params, body, key_uuid=key_uuid, response_id=response_id, history=history
    )
    if not params.stream:
        return json_response(queued)
    # the job's events as it stores them (a client that leaves resumes with GET ?stream=true)
    events = await open_stream(platform, response_id, key_uuid, -1)
    return SSEResponse(_encode(events))


async def _last(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """A plain answer: the final response of the events (closed at once if the client leaves)."""
    final: dict[str, Any] | None = None
    async with aclosing(events):
        async for event in events:
            if event["type"] in FINAL_EVENTS:
                final = event["response"]
    assert final is not None, "the runner ended without a final event"
    return final


def _frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def _encode(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield _frame(event)
    finally:
        await events.aclose()  # leaving the stream does not cancel a background response


async def _sse(
    events: AsyncIterator[dict[str, Any]], first: dict[str, Any], request_id: str
) -> AsyncIterator[bytes]:
    """The SSE body; the runner bills and settles whatever ends it (closing it on a client gone)."""
    last_seq = first.get("sequence_number", 0)
    try:
        yield _frame(first)
        async for event in events:
            last_seq = event.get("sequence_number", last_seq)
            yield _frame(event)
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:  # a failure the runner did not turn into events: one error event
        data = orjson.loads(stream_error_event(exc, request_id)[6:])
        error = data.get("error") or {}
        yield _frame(
            {
                "type": "error",
                "sequence_number": last_seq + 1,
                "code": error.get("code"),
                "message": error.get("message") or "internal error",
                "param": error.get("param"),
            }
        )
    finally:
        await events.aclose()
