"""A stand-in upstream for /v1/responses tests: reasoning models, tool calls, vision, native Responses.

A real aiohttp server on a real socket (like tests/support/upstream.py). The upstream model name
picks the behaviour of POST /v1/chat/completions:
  "reasoner"      reasoning in `reasoning_content`, then the answer; usage with reasoning_tokens
  "reasoner-alt"  the same with the `reasoning` field (OpenRouter / newer vLLM spelling)
  "thinker"       the reasoning inline: "<think>...</think>" then the answer
  "toolcaller"    calls the first offered tool (arguments in fragments when streamed), and
                  answers in text once the last message is a tool result
  "vision"        says how many image_url parts it received
  "cutoff"        answers max_tokens words and finish_reason "length"
  "mcpcaller"     calls the MCP tool `lookup` (key capital-of-france), then answers with its result
  "looper"        calls the MCP tool `add` on every turn (never answers: the loop bound ends it)
  "broken"        (streamed) sends two words, then an error event
  "slow"          streamed: a word every 0.2 s for a minute; plain: answers after 20 s
POST /v1/responses answers natively: a Responses object, or its SSE events ("native-nousage":
without usage).
Every body received is kept in `requests`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.support.aio_server import ThreadedAiohttpServer

REASONING = ["The", " user", " asks", " 2+2.", " That", " is", " 4."]
ANSWER = ["The", " answer", " is", " 4."]


class ResponsesStandIn(ThreadedAiohttpServer):
    handler_cancellation = True  # a client gone cancels the handler

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.abandoned = 0  # streams the gateway dropped

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)

    # -- chat completions -------------------------------------------------------------------------
    def _plan(self, body: dict[str, Any]) -> dict[str, Any]:
        """What to answer: reasoning words (in `field`), content words, tool calls, finish reason."""
        model = body.get("model", "")
        messages = body.get("messages") or []
        plan: dict[str, Any] = {"reasoning": [], "field": "reasoning_content", "content": ANSWER, "calls": []}
        plan["finish"] = "stop"
        if model in ("reasoner", "reasoner-alt"):
            plan["reasoning"] = REASONING
            plan["field"] = "reasoning_content" if model == "reasoner" else "reasoning"
        elif model == "thinker":
            plan["content"] = ["<think>", "Two", " plus", " two.", "</think>", "\n\n", "It", " is", " 4."]
        elif model == "toolcaller":
            tools = body.get("tools") or []
            if tools and not (messages and messages[-1].get("role") == "tool"):
                name = tools[0]["function"]["name"]
                plan["content"] = []
                plan["calls"] = [
                    {"id": "call_standin1", "name": name, "arguments": ['{"city"', ': "Paris"}']}
                ]
                plan["finish"] = "tool_calls"
            elif messages and messages[-1].get("role") == "tool":
                plan["content"] = ["Tool", " said:", " " + str(messages[-1].get("content"))]
        elif model in ("mcpcaller", "looper"):  # call an MCP tool by name, answer once it said something
            names = [t["function"]["name"] for t in body.get("tools") or []]
            done = messages and messages[-1].get("role") == "tool"
            if model == "looper" or not done:
                name, args = (
                    ("add", '{"a": 1, "b": 2}')
                    if model == "looper"
                    else ("lookup", '{"key": "capital-of-france"}')
                )
                if name in names:
                    plan["content"] = []
                    plan["calls"] = [
                        {"id": f"call_{len(messages)}", "name": name, "arguments": [args[:5], args[5:]]}
                    ]
                    plan["finish"] = "tool_calls"
            else:
                plan["content"] = ["Tool", " said:", " " + str(messages[-1].get("content"))]
        elif model == "vision":
            images = sum(
                1
                for m in messages
                if isinstance(m.get("content"), list)
                for p in m["content"]
                if p.get("type") == "image_url"
            )
            plan["content"] = [f"I see {images} image(s)."]
        elif model == "cutoff":
            plan["content"] = [f" w{i}" for i in range(body.get("max_tokens") or 5)]
            plan["finish"] = "length"
        return plan

    def _usage(self, body: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
        prompt = 10 + sum(len(str(m.get("content", ""))) // 8 for m in body.get("messages", []))
        out = len(plan["reasoning"]) + len(plan["content"]) + 5 * len(plan["calls"])
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": out,
            "total_tokens": prompt + out,
        }
        if plan["reasoning"]:
            usage["completion_tokens_details"] = {"reasoning_tokens": len(plan["reasoning"])}
        return usage

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        plan = self._plan(body)
        if body.get("stream"):
            return await self._stream(request, body, plan)
        if body.get("model") == "slow":
            try:
                await asyncio.sleep(20)
            except asyncio.CancelledError:
                self.abandoned += 1
                raise
        message: dict[str, Any] = {"role": "assistant", "content": "".join(plan["content"]) or None}
        if plan["reasoning"]:
            message[plan["field"]] = "".join(plan["reasoning"])
        if plan["calls"]:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": "".join(c["arguments"])},
                }
                for c in plan["calls"]
            ]
        return web.json_response(
            {
                "id": "chatcmpl-r",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {"index": 0, "message": message, "finish_reason": plan["finish"], "logprobs": None}
                ],
                "usage": self._usage(body, plan),
            }
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], plan: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> None:
            data: dict[str, Any] = {
                "id": "chatcmpl-r",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage:
                data["usage"] = usage
            await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")

        await send({"role": "assistant", "content": ""})
        if body.get("model") == "slow":  # a word every 0.2 s for a minute (clients leave mid-way)
            try:
                for i in range(300):
                    await asyncio.sleep(0.2)
                    await send({"content": f" w{i}"})
            except (ConnectionResetError, asyncio.CancelledError):
                self.abandoned += 1
                raise
        if body.get("model") == "broken":  # a few words, then an error event mid-stream
            for word in ANSWER[:2]:
                await send({"content": word})
            await response.write(b'data: {"error": {"message": "stand-in broke mid-stream"}}\n\n')
            return response
        for word in plan["reasoning"]:
            await send({plan["field"]: word})
        for word in plan["content"]:
            await send({"content": word})
        for i, call in enumerate(plan["calls"]):
            head = {
                "index": i,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            await send({"tool_calls": [head]})
            for frag in call["arguments"]:
                await send({"tool_calls": [{"index": i, "function": {"arguments": frag}}]})
        await send({}, plan["finish"])
        await send(None, usage=self._usage(body, plan))
        await response.write(b"data: [DONE]\n\n")
        return response

    # -- native responses -------------------------------------------------------------------------
    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        text = f"Native answer to {len(body.get('input') or [])} item(s)."
        item = {
            "type": "message",
            "id": "msg_native1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
        usage = {
            "input_tokens": 21,
            "input_tokens_details": {"cached_tokens": 3},
            "output_tokens": 6,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 27,
        }
        final = {
            "id": "resp_upstream",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body.get("model"),
            "output": [item],
            "usage": usage,
        }
        if body.get("model") == "native-nousage":
            final.pop("usage")
        if not body.get("stream"):
            return web.json_response(final)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        start = {**final, "status": "in_progress", "output": [], "usage": None}
        added = {**item, "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events = [
            {"type": "response.created", "response": start},
            {"type": "response.in_progress", "response": start},
            {"type": "response.output_item.added", "output_index": 0, "item": added},
            {
                "type": "response.content_part.added",
                "item_id": "msg_native1",
                "output_index": 0,
                "content_index": 0,
                "part": part,
            },
            {
                "type": "response.output_text.delta",
                "item_id": "msg_native1",
                "output_index": 0,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            },
            {
                "type": "response.output_text.done",
                "item_id": "msg_native1",
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            },
            {
                "type": "response.content_part.done",
                "item_id": "msg_native1",
                "output_index": 0,
                "content_index": 0,
                "part": item["content"][0],
            },
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": final},
        ]
        for n, ev in enumerate(events):
            ev["sequence_number"] = n + 100  # the gateway renumbers
            await response.write(f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n".encode())
        return response
