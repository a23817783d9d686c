"""POST /v1/chat/completions: validate, pick the engine, answer (JSON or SSE), bill once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import authenticate, json_body, json_response, platform_of, request_id_of, validate
from infergate.api.errors import error_payload
from infergate.api.streaming import ClientGone, SSEResponse, run_until_disconnect
from infergate.cache.plan import PromptCachePlan
from infergate.catalog import ModelSpec
from infergate.engines.base import ChatEngine, ChatRequest, RequestContext
from infergate.errors import InfergateError
from infergate.platform import Platform
from infergate.schemas.chat import ChatCompletionRequest
from infergate.schemas.common import INFERENCE_ERRORS
from infergate.tokens import count_chat_prompt, count_tokens
from infergate.usage import Usage

router = APIRouter()
ENDPOINT = "chat.completions"
DONE = b"data: [DONE]\n\n"

OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            }
        },
    }
}


@router.post(
    "/chat/completions",
    responses=INFERENCE_ERRORS,
    openapi_extra=OPENAPI_BODY,
    summary="Create a chat completion (OpenAI compatible; SSE when stream is true)",
)
async def create_chat_completion(request: Request) -> Response:
    started = time.perf_counter()
    key = await authenticate(request)
    body = await json_body(request)
    params = validate(ChatCompletionRequest, body)
    platform = platform_of(request)
    spec, engine = platform.chat_engine(params.model)
    request.scope["state"]["model"] = spec.id
    request_id = request_id_of(request)
    chat = ChatRequest(
        params=params,
        body=body,
        context=RequestContext(request_id=request_id, key_uuid=key.uuid),
        cache_plan=PromptCachePlan.from_messages(params.messages),
    )
    bill = {
        "spec": spec,
        "request_id": request_id,
        "key_uuid": key.uuid,
        "endpoint": ENDPOINT,
        "started": started,
    }
    if params.stream:
        return await _stream(request, platform, engine, chat, bill)
    try:
        result = await run_until_disconnect(request.receive, engine.complete(chat))
    except InfergateError as exc:
        platform.bill(usage=Usage(), status=exc.status, **bill)
        raise
    payload = result.body
    payload["usage"] = result.usage.to_chat()
    platform.bill(usage=result.usage, status=200, **bill)
    return json_response(payload)


async def _stream(
    request: Request, platform: Platform, engine: ChatEngine, chat: ChatRequest, bill: dict[str, Any]
) -> Response:
    events = engine.stream(chat)
    try:  # the first event before answering 200, so early failures get their real status
        first = await run_until_disconnect(request.receive, events.__anext__())
    except StopAsyncIteration:
        first = None
    except InfergateError as exc:
        platform.bill(usage=Usage(), status=exc.status, **bill)
        await events.aclose()
        raise
    return SSEResponse(_sse(platform, bill["spec"], events, first, chat, bill))


async def _sse(
    platform: Platform,
    spec: ModelSpec,
    events: AsyncIterator[Any],
    first: Any,
    chat: ChatRequest,
    bill: dict[str, Any],
) -> AsyncIterator[bytes]:
    usage: Usage | None = None
    status = 200
    texts: list[str] = []
    head: dict[str, Any] = {}
    try:
        item = first
        while item is not None:
            if isinstance(item, Usage):
                usage = item
            else:
                if not head:
                    head = {k: item.get(k) for k in ("id", "created", "system_fingerprint")}
                _collect_text(item, texts)
                yield b"data: " + orjson.dumps(item) + b"\n\n"
            item = await anext(events, None)
        if usage is None:
            usage = _estimate(chat, texts)
        if chat.params.include_usage:
            yield b"data: " + orjson.dumps(_usage_chunk(spec, head, usage)) + b"\n\n"
        yield DONE
    except InfergateError as exc:
        status = exc.status
        yield b"data: " + error_payload(exc.status, exc.to_dict(), bill["request_id"], "/v1") + b"\n\n" + DONE
    except (asyncio.CancelledError, GeneratorExit):
        status = ClientGone.status
        raise
    finally:
        await events.aclose()
        platform.bill(usage=usage or _estimate(chat, texts), status=status, **bill)


def _collect_text(chunk: dict[str, Any], texts: list[str]) -> None:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            if isinstance(delta.get("content"), str):
                texts.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    texts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))


def _estimate(chat: ChatRequest, texts: list[str]) -> Usage:
    """No usage from the engine (upstream sent none, or the client left): count it ourselves."""
    return Usage(
        input_tokens=count_chat_prompt(chat.params.messages),
        output_tokens=count_tokens("".join(texts)),
        estimated=True,
    )


def _usage_chunk(spec: ModelSpec, head: dict[str, Any], usage: Usage) -> dict[str, Any]:
    return {
        "id": head.get("id") or "chatcmpl-usage",
        "object": "chat.completion.chunk",
        "created": head.get("created") or int(time.time()),
        "model": spec.id,
        "system_fingerprint": head.get("system_fingerprint"),
        "choices": [],
        "usage": usage.to_chat(),
    }
