"""The models page's playground: chat (streamed), speech and images, billed like any request.

The browser never sees a model access key. The panel runs the request through the public API
in-process (loopback.py) with the "panel playground" key, so admission, limits and metering
are those of every client, and the ledger shows what the playground spent. That key's secret
is derived from the admin token (HMAC): every replica with the same token computes the same
secret, nothing is stored, and a new admin token gives a new key. It is created on first use
(and again if someone deletes it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from infergate.platform import Platform
from infergate.storage.keys import SECRET_PREFIX, hash_secret
from infergate.web import loopback
from infergate.web.guard import Ctx, panel_action

router = APIRouter()
PLAYGROUND_KEY_NAME = "panel playground"
MAX_PROMPT_CHARS = 20_000


def playground_secret(admin_token: str) -> str:
    mac = hmac.new(admin_token.encode(), b"infergate panel playground key v1", hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _ensure_key(platform: Platform, secret: str) -> bool:
    """True when the key had to be created."""
    if platform.keys.find_by_hash(hash_secret(secret)) is not None:
        return False
    try:
        platform.keys.create(PLAYGROUND_KEY_NAME, "panel", secret=secret)
    except IntegrityError:  # another request (or replica) created it meanwhile
        return False
    return True


async def playground_key(platform: Platform, admin_token: str) -> str:
    secret = playground_secret(admin_token)
    if await asyncio.to_thread(_ensure_key, platform, secret):
        await platform.key_cache.changed()  # forget a cached "unknown key" for this secret
    return secret


def _error(status: int, message: str) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _body(request: Request) -> dict[str, Any] | None:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


async def chat(request: Request, ctx: Ctx) -> Response:
    body = await _body(request)
    if body is None or not isinstance(body.get("messages"), list):
        return _error(400, "send {model, messages}")
    payload = {
        "model": str(body.get("model", "")),
        "messages": body["messages"],
        "max_tokens": body.get("max_tokens", 256),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if body.get("temperature") is not None:
        payload["temperature"] = body["temperature"]
    secret = await playground_key(ctx.platform, ctx.admin_token)
    answer = await loopback.call(request, "POST", "/v1/chat/completions", secret, payload, stream=True)
    chunks = answer.chunks
    assert chunks is not None

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # the browser left: the API sees the disconnect and bills what ran

    media = answer.headers.get("content-type", "application/json")
    return StreamingResponse(
        relay(), status_code=answer.status, media_type=media, headers={"Cache-Control": "no-store"}
    )


async def speech(request: Request, ctx: Ctx) -> Response:
    body = await _body(request)
    text = str((body or {}).get("input", ""))
    if not body or not text or len(text) > MAX_PROMPT_CHARS:
        return _error(400, "send {model, input} with 1 to 20000 characters of input")
    secret = await playground_key(ctx.platform, ctx.admin_token)
    payload = {"model": str(body.get("model", "")), "input": text, "response_format": "wav"}
    answer = await loopback.call(request, "POST", "/v1/audio/speech", secret, payload)
    media = answer.headers.get("content-type", "application/json")
    return Response(answer.body, status_code=answer.status, media_type=media)


async def image(request: Request, ctx: Ctx) -> Response:
    body = await _body(request)
    prompt = str((body or {}).get("prompt", ""))
    if not body or not prompt or len(prompt) > MAX_PROMPT_CHARS:
        return _error(400, "send {model, prompt}")
    secret = await playground_key(ctx.platform, ctx.admin_token)
    payload = {"model": str(body.get("model", "")), "prompt": prompt, "n": 1, "response_format": "b64_json"}
    for name in ("size", "num_inference_steps"):
        if body.get(name) is not None:
            payload[name] = body[name]
    answer = await loopback.call(request, "POST", "/v1/images/generations", secret, payload)
    return Response(answer.body, status_code=answer.status, media_type="application/json")


router.add_api_route("/panel/playground/chat", panel_action(chat), methods=["POST"])
router.add_api_route("/panel/playground/speech", panel_action(speech), methods=["POST"])
router.add_api_route("/panel/playground/image", panel_action(image), methods=["POST"])
