"""Run one response: the model calls (with the MCP tool loop), its stream events, its one bill.

`run_response` is the single engine of /v1/responses: the POST route streams its events (or
keeps the last one for a plain answer), and background jobs run it too. Work that can fail
with a clear status (an unknown model, a bad image, a refused upstream call, a prompt that does
not fit) fails before the first event, so a client gets a real 4xx rather than a failed stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from infergate.engines.base import ChatEngine, ChatRequest, ChatResult, RequestContext
from infergate.errors import InfergateError, InvalidRequest
from infergate.http_errors import invalid_from_validation
from infergate.metering import Charge, Meter
from infergate.output_limit import check_output_limit
from infergate.responses import translate
from infergate.responses.events import Event, OutputBuilder, Sequencer, ToolCall
from infergate.responses.objects import response_object, usage_object
from infergate.responses.output import ChatOutput
from infergate.responses.steps import Budget, fit_context, message_text
from infergate.schemas.chat import ChatCompletionRequest
from infergate.schemas.responses import ResponsesRequest
from infergate.tokens import chat_framing_tokens, count_tokens
from infergate.usage import Usage

log = logging.getLogger("infergate.responses")
ENDPOINT = "responses"


async def run_response(
    platform: Any,
    params: ResponsesRequest,
    body: dict[str, Any],
    *,
    key_uuid: str | None,
    request_id: str,
    response_id: str,
    history: list[dict[str, Any]],
    started: float,
) -> AsyncIterator[Event]:
    """Yield the response's stream events; the last is response.completed / .incomplete / .failed
    with the whole response. Billed once (every model call of a tool loop summed), stored when
    `params.store` (before the last event is yielded)."""
    spec, engine = platform.chat_engine(params.model)
    input_items = translate.normalize_input(params)
    translate.check_vision(history + input_items, spec.id, spec.vision)
    check_output_limit(spec, "max_output_tokens", params.max_output_tokens)
    if spec.responses_native:
        from infergate.responses.native import run_native

        events = run_native(
            platform,
            spec,
            engine,
            params,
            body,
            key_uuid=key_uuid,
            request_id=request_id,
            response_id=response_id,
            history=history,
            input_items=input_items,
            started=started,
        )
        async with aclosing(events):  # closing this closes the work at once (billed as such)
            async for event in events:
                yield event
        return
    toolset = await _open_mcp(params, body)
    try:
        events = _run_chat(
            platform,
            spec,
            engine,
            params,
            toolset,
            key_uuid=key_uuid,
            request_id=request_id,
            response_id=response_id,
            history=history,
            input_items=input_items,
            started=started,
        )
        async with aclosing(events):
            async for event in events:
                yield event
    finally:
        if toolset is not None:
            await toolset.close()


async def _open_mcp(params: ResponsesRequest, body: dict[str, Any]) -> Any:
    """The request's MCP servers, connected and listed (None without `mcp` tools)."""
    if not params.mcp_tools:
        return None
    from infergate.responses.mcp import McpSettings, McpToolset

    global _MCP_SETTINGS
    if _MCP_SETTINGS is None:
        _MCP_SETTINGS = McpSettings.from_env()
    return await McpToolset.open(body.get("tools"), _MCP_SETTINGS)


_MCP_SETTINGS: Any = None


class _Run:
    """The state of one response while it runs."""

    def __init__(self, params: ResponsesRequest, spec: Any, response_id: str, toolset: Any) -> None:
        self.params = params
        self.spec = spec
        self.response_id = response_id
        self.created_at = int(time.time())
        self.output: list[dict[str, Any]] = []
        self.seq = Sequencer()
        owner = (lambda name: toolset.server_of(name)[0] if toolset.owns(name) else None) if toolset else None
        self.builder = OutputBuilder(self.seq, self.output, owner)
        self.tool_output_tokens = 0

    def response(self, status: str, usage: Usage | None = None, **extra: Any) -> dict[str, Any]:
        return response_object(
            self.params,
            self.spec,
            self.response_id,
            self.created_at,
            status,
            self.output,
            usage_object(usage, self.tool_output_tokens) if usage is not None else None,
            **extra,
        )


async def _run_chat(
    platform: Any,
    spec: Any,
    engine: ChatEngine,
    params: ResponsesRequest,
    toolset: Any,
    *,
    key_uuid: str | None,
    request_id: str,
    response_id: str,
    history: list[dict[str, Any]],
    input_items: list[dict[str, Any]],
    started: float,
) -> AsyncIterator[Event]:
    run = _Run(params, spec, response_id, toolset)
    items = history + input_items
    messages = translate.chat_messages(items, params.instructions)
    messages = await fit_context(messages, params, spec)
    mcp_tools = toolset.chat_tools() if toolset is not None else []
    tools = translate.chat_tools(params, mcp_tools)
    meter: Meter = await platform.admit(
        Charge(spec, request_id, key_uuid, ENDPOINT, started),
        max_output_tokens=params.max_output_tokens,
        prompt_texts=lambda: [message_text(m) for m in messages],
        prompt_overhead=chat_framing_tokens,
        live_usage=engine.live_usage,
    )
    budget = Budget(meter)
    # a plain answer (not streamed, not a background job whose events are stored for replay)
    # needs only the final event: the others are numbered and built, not passed on
    live = params.stream or params.background
    max_steps = toolset.settings.max_steps if toolset is not None else 1
    status, error = "completed", None
    try:
        step = 0
        while True:
            step += 1
            chat = _chat_request(params, messages, tools, request_id, key_uuid, budget.step_usage())
            out = ChatOutput(run.builder)
            first = step == 1
            try:
                async with aclosing(_model_call(engine, chat, out, params.stream, meter)) as call_events:
                    async for event in call_events:
                        if first:  # the call answered: the response exists from here on
                            first = False
                            if live:
                                opened = run.response("in_progress")
                                yield run.seq.event("response.created", response=opened)
                                yield run.seq.event("response.in_progress", response=opened)
                            for ev in _mcp_listing(run, toolset):
                                if live:
                                    yield ev
                        if event is not None and live:
                            yield event
            except InvalidRequest as exc:
                if step == 1 and exc.code == "context_length_exceeded":
                    raise _context_error(exc, params) from None
                exc.param = _responses_param(exc.param)  # the engine names chat's fields
                raise
            for event in out.finish():
                if live:
                    yield event
            await budget.end_step(chat.context.extra.get("result_usage"), out.reasoning, out.texts, messages)
            if out.end.finish_reason == "length":
                status = "incomplete"
                break
            mcp_calls = [c for c in run.builder.finished_calls if c.item["type"] == "mcp_call"]
            run.builder.finished_calls = []
            if not mcp_calls:
                break
            async for event in _call_tools(run, toolset, mcp_calls):
                if live:
                    yield event
            if any(it["type"] == "function_call" and it["status"] == "completed" for it in run.output):
                break  # a client function call in the same turn: control goes back to the client
            if step >= max_steps:
                status = "incomplete"
                break
            messages = translate.chat_messages(items + run.output, params.instructions)
    except InfergateError as exc:
        if run.seq.next == 0:  # nothing sent yet: the caller answers with the error's status
            budget.fail(exc)
            raise
        status, error = "failed", exc
    except BaseException as exc:
        budget.fail(exc)
        raise
    if error is not None:
        budget.fail(error)
        for event in run.builder.finish("incomplete"):
            if live:
                yield event
        yield run.seq.event("error", code=error.code, message=error.message, param=error.param)
        final = run.response(
            "failed", budget.total, error={"code": _error_code(error), "message": error.message}
        )
        await store_response(platform, params, final, input_items, key_uuid)
        yield run.seq.event("response.failed", response=final)
        return
    usage = budget.settle()
    extra: dict[str, Any] = {}
    if status == "incomplete":
        extra["incomplete_details"] = {"reason": "max_output_tokens"}
    final = run.response(status, usage, **extra)
    await store_response(platform, params, final, input_items, key_uuid)
    yield run.seq.event(f"response.{status}", response=final)


async def _call_tools(run: _Run, toolset: Any, calls: list[ToolCall]) -> AsyncIterator[Event]:
    """Run the MCP calls the model made, one after the other, each item done with its result."""
    for call in calls:
        yield run.seq.event("response.mcp_call.in_progress", item_id=call.item["id"], output_index=call.index)
        done = await toolset.call(call.item["name"], call.item["arguments"])
        run.tool_output_tokens += count_tokens(str(done.get("output") or ""))
        for event in run.builder.mcp_result(call, _call_result(done)):
            yield event


async def _model_call(
    engine: ChatEngine, chat: ChatRequest, out: ChatOutput, stream: bool, meter: Meter
) -> AsyncIterator[Event | None]:
    """One chat call: a None first (the call answered), then the events of its output."""
    if not stream:
        result: ChatResult = await engine.complete(chat)
        chat.context.extra["result_usage"] = result.usage
        yield None
        for event in out.completion(result.body):
            yield event
        return
    chunks = engine.stream(chat)
    try:
        first = await anext(chunks, None)
        yield None
        item = first
        while item is not None:
            if isinstance(item, Usage):
                chat.context.extra["result_usage"] = item
            else:
                for event in out.chunk(item):
                    yield event
                meter.output[:] = out.texts
            item = await anext(chunks, None)
    finally:
        await chunks.aclose()


def _mcp_listing(run: _Run, toolset: Any) -> list[Event]:
    if toolset is None:
        return []
    events: list[Event] = []
    for item in toolset.list_items:
        middle = ["response.mcp_list_tools.in_progress"]
        middle.append(
            "response.mcp_list_tools.failed" if item.get("error") else "response.mcp_list_tools.completed"
        )
        events += run.builder.whole_item(item, middle)
    return events


def _call_result(done: dict[str, Any]) -> dict[str, Any]:
    """A finished mcp_call's fields, on the item already announced (it keeps its id)."""
    return {k: v for k, v in done.items() if k not in ("id", "type")}


def _chat_request(
    params: ResponsesRequest,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    request_id: str,
    key_uuid: str | None,
    usage: Usage,
) -> ChatRequest:
    body = translate.chat_body(params, messages, tools, params.stream)
    try:
        chat_params = ChatCompletionRequest.model_validate(body)
    except Exception as exc:  # pydantic ValidationError: our translation of the input is at fault
        err = invalid_from_validation(exc)  # type: ignore[arg-type]
        raise InvalidRequest(
            f"input could not be translated for the model: {err.message}", param="input"
        ) from None
    return ChatRequest(
        params=chat_params,
        body=body,
        context=RequestContext(request_id=request_id, key_uuid=key_uuid, usage=usage),
    )


# Chat request fields (as an engine names them in a 400) -> the Responses request's fields.
CHAT_PARAMS = {"response_format": "text.format", "messages": "input", "max_tokens": "max_output_tokens"}


def _responses_param(param: str | None) -> str | None:
    if not param:
        return param
    head, _, rest = param.partition(".")
    if head == "response_format":
        return "text.format.schema" if rest.startswith("json_schema") else "text.format"
    return CHAT_PARAMS.get(head, param)


def _context_error(exc: InvalidRequest, params: ResponsesRequest) -> InvalidRequest:
    hint = "" if params.truncation == "auto" else "; truncation: 'auto' drops the oldest turns to fit"
    return InvalidRequest(f"{exc.message}{hint}", param="input", code="context_length_exceeded")


def _error_code(exc: InfergateError) -> str:
    return "rate_limit_exceeded" if exc.status == 429 else "server_error"


async def store_response(
    platform: Any,
    params: ResponsesRequest,
    final: dict[str, Any],
    input_items: list[dict[str, Any]],
    key: Any,
) -> None:
    if not params.store or key is None or params.background:
        return  # a background response is stored by its job (responses/background.py)
    store = getattr(platform, "responses", None)
    if store is None:
        log.warning("response %s not stored: no response store on this platform", final["id"])
        return
    await store.save(
        final,
        input_items,
        key_uuid=key,
        previous_response_id=params.previous_response_id,
        conversation_id=params.conversation_id,
        background=params.background,
    )
