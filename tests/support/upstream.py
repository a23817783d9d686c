"""A local stand-in for an OpenAI-compatible upstream: a real aiohttp server on a real socket.

The upstream model name picks the behaviour, so one server covers every case:
  "standin"          answers normally (usage included; SSE when asked)
  "nousage"          never reports usage (the gateway must count and mark it estimated)
  "slow"             waits `slow_seconds` before answering (timeouts, disconnects)
  "slowstream"       streams one chunk per 0.2 s for a long time (disconnect mid-stream)
  "cached"           reports OpenAI cached tokens (prompt_tokens_details.cached_tokens)
  "anthropic-cache"  reports Anthropic-style cache_creation/cache_read fields
  "anthropic-cache-write"  the same with a 5m/1h cache_creation breakdown
  "bad-details"      usage details that are not objects (prompt_tokens_details: 5, a list)
  "bad-usage"        usage counts that are not counts (the gateway must estimate)
  "fail-<status>"    answers that HTTP status with an OpenAI error body
  "badjson"          answers 200 with a body that is not JSON
  "midstream-error"  starts a stream, then sends an error event
Every request body received is kept in `requests`; streams the client abandoned in `abandoned`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.support.aio_server import ThreadedAiohttpServer

ANSWER_WORDS = ["Paris", " is", " the", " capital", " of", " France", "."]


def usage_for(body: dict[str, Any], words: int) -> dict[str, Any]:
    prompt = 10 + sum(len(str(m.get("content", ""))) // 8 for m in body.get("messages", []))
    return {"prompt_tokens": prompt, "completion_tokens": words, "total_tokens": prompt + words}


class StandInUpstream(ThreadedAiohttpServer):
    def __init__(self, slow_seconds: float = 3.0) -> None:
        super().__init__()
        self.slow_seconds = slow_seconds
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.abandoned = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "standin", "object": "model", "created": 0, "owned_by": "test"}],
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        model = body.get("model", "")
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            return web.json_response(
                {"error": {"message": f"stand-in failure {status}", "type": "test"}},
                status=status,
                headers={"retry-after": "7"} if status == 429 else None,
            )
        if model == "badjson":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if model == "slow":
            await asyncio.sleep(self.slow_seconds)
        if body.get("stream"):
            return await self._stream(request, body, model)
        words = ANSWER_WORDS[: body.get("max_tokens") or len(ANSWER_WORDS)]
        answer: dict[str, Any] = {
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i in range(body.get("n") or 1)
            ],
            "service_tier": None,
        }
        if model != "nousage":
            answer["usage"] = self._usage(body, model, len(words) * (body.get("n") or 1))
        return web.json_response(answer)

    def _usage(self, body: dict[str, Any], model: str, words: int) -> dict[str, Any]:
        usage = usage_for(body, words)
        if model == "cached":
            usage["prompt_tokens_details"] = {"cached_tokens": 8}
        if model == "anthropic-cache":
            usage.update({"cache_creation_input_tokens": 0, "cache_read_input_tokens": 30})
        if model == "bad-details":
            usage.update({"prompt_tokens_details": 5, "completion_tokens_details": [1, 2]})
        if model == "bad-usage":
            usage.update({"prompt_tokens": "many", "completion_tokens": -1})
        if model == "anthropic-cache-write":  # prompt_tokens here excludes the cached tokens
            usage.update(
                {
                    "cache_creation_input_tokens": 40,
                    "cache_creation": {"ephemeral_5m_input_tokens": 25, "ephemeral_1h_input_tokens": 15},
                    "cache_read_input_tokens": 30,
                }
            )
        return usage

    async def _stream(self, request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
            data: dict[str, Any] = {
                "id": "chatcmpl-standin",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage:
                data["usage"] = usage
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        words = ANSWER_WORDS[: body.get("max_tokens") or len(ANSWER_WORDS)]
        try:
            await response.write(chunk({"role": "assistant", "content": ""}))
            if model == "slowstream":
                for i in range(300):
                    await asyncio.sleep(0.2)
                    await response.write(chunk({"content": f" w{i}"}))
            for i, word in enumerate(words):
                if model == "midstream-error" and i == 2:
                    await response.write(b'data: {"error": {"message": "stand-in broke mid-stream"}}\n\n')
                    return response
                await response.write(chunk({"content": word}))
            await response.write(chunk({}, "stop"))
            if model != "nousage" and (body.get("stream_options") or {}).get("include_usage"):
                await response.write(chunk(None, usage=self._usage(body, model, len(words))))
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.abandoned += 1
            raise
        return response
