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
from infergate.api.streaming import SSEResponse, run_until_disconnect, stream_error_event
from infergate.cache.plan import PromptCachePlan
from infergate.catalog import ModelSpec
from infergate.engines.base import ChatEngine, ChatRequest, RequestContext
from infergate.metering import CLIENT_GONE_STATUS, Charge, Meter
from infergate.output_limit import check_output_limit
from infergate.schemas.chat import ChatCompletionRequest
from infergate.schemas.common import INFERENCE_ERRORS
from infergate.tokens import chat_framing_tokens
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
    check_output_limit(spec, "max_tokens", params.max_tokens)
    check_output_limit(spec, "max_completion_tokens", params.max_completion_tokens)
    request_id = request_id_of(request)
    meter = await platform.admit(
        Charge(spec, request_id, key.uuid, ENDPOINT, started),
        max_output_tokens=params.output_limit,
        prompt_texts=lambda: [m.text() for m in params.messages],
        prompt_overhead=chat_framing_tokens,
        live_usage=engine.live_usage,
    )
    chat = ChatRequest(
        params=params,
        body=body,
        context=RequestContext(request_id=request_id, key_uuid=key.uuid, usage=meter.usage),
        cache_plan=PromptCachePlan.from_messages(params.messages),
    )
    if params.stream:
        return await _stream(request, engine, chat, meter)
    try:
        result = await run_until_disconnect(request.receive, engine.complete(chat))
        usage = result.usage
        if usage is None:
            meter.output = [
                _message_text(c.get("message")) for c in result.body["choices"] if isinstance(c, dict)
            ]
            usage = await meter.estimate()
    except BaseException as exc:
        meter.fail(exc)
        raise
    meter.settle(200, usage)
    payload = result.body
    payload["usage"] = usage.to_chat()
    return json_response(payload)


async def _stream(request: Request, engine: ChatEngine, chat: ChatRequest, meter: Meter) -> Response:
    events = engine.stream(chat)
    try:  # the first event before answering 200, so early failures get their real status
        first = await run_until_disconnect(request.receive, events.__anext__())
    except StopAsyncIteration:
        first = None
    except BaseException as exc:
        meter.fail(exc)
        await events.aclose()
        raise
    return SSEResponse(_sse(events, first, chat, meter))


async def _sse(
    events: AsyncIterator[Any], first: Any, chat: ChatRequest, meter: Meter
) -> AsyncIterator[bytes]:
    """The SSE body. Whatever ends it (the last event, an error of any kind, the client leaving),
    the meter is settled once with what was consumed."""
    usage: Usage | None = None
    head: dict[str, Any] = {}
    try:
        item = first
        while item is not None:
            if isinstance(item, Usage):
                usage = item
            else:
                if not head:
                    head = {k: item.get(k) for k in ("id", "created", "system_fingerprint")}
                _collect_text(item, meter.output)
                yield b"data: " + orjson.dumps(item) + b"\n\n"
            item = await anext(events, None)
        if usage is None:
            usage = await meter.estimate()
        meter.settle(200, usage)
        if chat.params.include_usage:
            yield b"data: " + orjson.dumps(_usage_chunk(meter.charge.spec, head, usage)) + b"\n\n"
        yield DONE
    except (asyncio.CancelledError, GeneratorExit) as exc:
        meter.fail(exc)
        raise
    except Exception as exc:
        meter.fail(exc)
        yield stream_error_event(exc, meter.charge.request_id) + DONE
    finally:
        await events.aclose()
        meter.settle(CLIENT_GONE_STATUS)  # only if nothing above settled (e.g. aclose before start)


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


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            text += str(call["function"].get("name") or "") + str(call["function"].get("arguments") or "")
    return text


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
