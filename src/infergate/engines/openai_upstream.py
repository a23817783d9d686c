"""Backend for any OpenAI-compatible upstream (vLLM, llama.cpp server, Ollama, OpenAI, DigitalOcean).

The client's body is forwarded as sent (every parameter, known or not) with the model name
swapped for the upstream's. Streams are re-emitted chunk by chunk as they arrive; usage is
always requested upstream so the ledger is exact, and counted locally when the upstream
sends none.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from infergate.catalog import ModelSpec
from infergate.engines.base import ChatEngine, ChatRequest, ChatResult
from infergate.errors import (
    InfergateError,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from infergate.observability import UPSTREAM_ERRORS
from infergate.usage import Usage

CACHE_CONTROL_FIELDS = ("cache_control",)


class OpenAIUpstreamEngine(ChatEngine):
    def __init__(self, spec: ModelSpec, data_dir: Path | None = None) -> None:
        super().__init__(spec, data_dir)
        assert spec.base_url
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"content-type": "application/json"}
        if spec.api_key_env:
            self.headers["authorization"] = f"Bearer {os.environ.get(spec.api_key_env, '')}"
        self.timeout = aiohttp.ClientTimeout(total=spec.timeout, sock_connect=spec.connect_timeout)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            json_serialize=lambda o: orjson.dumps(o).decode(),
            auto_decompress=True,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def _payload(self, request: ChatRequest, stream: bool) -> bytes:
        body = dict(request.body)
        body["model"] = self.spec.upstream_name
        if not self.spec.supports_cache_control:
            body["messages"] = [_strip_cache_control(m) for m in body["messages"]]
        if stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True  # always: the ledger needs the upstream's count
            body["stream_options"] = options
        return orjson.dumps(body)

    async def _post(self, payload: bytes) -> aiohttp.ClientResponse:
        assert self.session is not None, "engine not started"
        try:
            response = await self.session.post(self.url, data=payload, headers=self.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_failure(self.spec, exc, self._count) from None
        if response.status >= 400:
            text = await response.text(errors="replace")
            response.release()
            raise self._upstream_failure(response.status, text, response.headers)
        return response

    async def complete(self, request: ChatRequest) -> ChatResult:
        response = await self._post(self._payload(request, stream=False))
        try:
            raw = await response.read()
        except TimeoutError:
            self._count("timeout")
            raise UpstreamTimeout(f"upstream {self.spec.id} timed out mid-answer") from None
        except aiohttp.ClientError as exc:
            self._count("broken")
            raise UpstreamError(f"upstream {self.spec.id} broke off its answer: {exc}") from None
        finally:
            response.release()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._count("bad_json")
            raise UpstreamError(f"upstream {self.spec.id} answered with invalid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            self._count("bad_shape")
            raise UpstreamError(f"upstream {self.spec.id} answered without choices")
        usage = Usage.from_openai(body.pop("usage", None))  # None: the api layer estimates it
        if usage is not None and request.cache_plan.explicit:
            usage.cache_control = True  # the client used cache_control: answer in the seed's fields
        body["model"] = self.spec.id
        return ChatResult(body=body, usage=usage)

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any] | Usage]:
        response = await self._post(self._payload(request, stream=True))
        if not response.content_type.startswith("text/event-stream"):
            response.release()
            self._count("not_a_stream")
            raise UpstreamError(
                f"upstream {self.spec.id} answered {response.content_type or 'no content type'} "
                "instead of an event stream"
            )
        usage: Usage | None = None
        try:
            async for chunk in _sse_events(response, self.spec.id):
                raw_usage = chunk.pop("usage", None)
                if raw_usage is not None:
                    usage = Usage.from_openai(raw_usage) or usage
                    if usage is not None and request.cache_plan.explicit:
                        usage.cache_control = True
                if chunk.get("error"):
                    err = chunk["error"]
                    message = err.get("message") if isinstance(err, dict) else str(err)
                    self._count("stream_error")
                    raise UpstreamError(f"upstream {self.spec.id}: {message}")
                choices = chunk.get("choices")
                if not choices:
                    continue  # the usage-only chunk; the api layer emits its own
                chunk["model"] = self.spec.id
                yield chunk
        except TimeoutError:
            self._count("timeout")
            raise UpstreamTimeout(f"upstream {self.spec.id} stalled mid-stream") from None
        except aiohttp.ClientError as exc:
            self._count("broken")
            raise UpstreamError(f"upstream {self.spec.id} broke off its stream: {exc}") from None
        finally:
            response.close()  # on cancel this drops the upstream connection, stopping its work
        if usage is not None:  # without it the api layer counts the tokens and marks them estimated
            yield usage

    def _upstream_failure(self, status: int, text: str, headers: Any) -> InfergateError:
        message = text[:2000]
        try:
            parsed = orjson.loads(text)
            err = parsed.get("error") if isinstance(parsed, dict) else None
            if isinstance(err, dict) and err.get("message"):
                message = str(err["message"])
            elif isinstance(err, str):
                message = err
            elif isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
                message = parsed["message"]
        except (orjson.JSONDecodeError, AttributeError):
            pass
        self._count(f"http_{status}")
        prefix = f"upstream {self.spec.id} answered {status}: "
        if status in (400, 422):
            return InvalidRequest(prefix + message)
        if status == 404:
            return NotFound(prefix + message, code="model_not_found")
        if status == 429:
            return RateLimited(prefix + message, headers={"Retry-After": headers.get("retry-after", "1")})
        if status in (503, 529):
            return Unavailable(prefix + message, headers={"Retry-After": headers.get("retry-after", "1")})
        if status == 504:
            return UpstreamTimeout(prefix + message)
        return UpstreamError(prefix + message)

    def _count(self, kind: str) -> None:
        UPSTREAM_ERRORS.labels(self.spec.id, kind).inc()


async def _sse_events(response: aiohttp.ClientResponse, model_id: str) -> AsyncIterator[dict[str, Any]]:
    """Parse `data:` events of an SSE body as they arrive; stop at [DONE]."""
    data_lines: list[bytes] = []
    async for line in response.content:
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            data_lines.append(line[5:].lstrip())
            continue
        if line or not data_lines:
            continue  # comments, event:/id: fields, keep-alives
        data, data_lines = b"\n".join(data_lines), []
        if data == b"[DONE]":
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream {model_id} sent an invalid stream event") from None
        if isinstance(event, dict):
            yield event


def _strip_cache_control(message: Any) -> Any:
    """Upstreams that don't know cache_control may reject it: drop it from content parts."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, dict):
        content = [content]  # the seed's single-object form is not standard OpenAI
    if isinstance(content, list):
        parts = [
            {k: v for k, v in p.items() if k not in CACHE_CONTROL_FIELDS} if isinstance(p, dict) else p
            for p in content
        ]
        return {**message, "content": parts}
    return message


def transport_failure(spec: ModelSpec, exc: BaseException, count: Callable[[str], None]) -> InfergateError:
    """A failure to reach an upstream or hear its answer, as the client's error (counted by kind).
    A connect timeout never reached it (nothing was asked of it): 503, like an unreachable one."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        count("unreachable")
        return Unavailable(
            f"upstream {spec.id} did not accept a connection within {spec.connect_timeout:g}s",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, TimeoutError):
        count("timeout")
        return UpstreamTimeout(f"upstream {spec.id} did not answer within {spec.timeout:g}s")
    count("unreachable")
    return Unavailable(f"upstream {spec.id} is unreachable: {exc}", headers={"Retry-After": "1"})
