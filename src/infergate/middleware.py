"""One pure-ASGI middleware for every request: request id, body size limit, metrics, access log.

Pure ASGI (not BaseHTTPMiddleware) because it sits on the hot path: it adds a few microseconds.
It also dispatches the hot inference routes (chat completions, model list) straight to their
endpoint functions: FastAPI's router and dependency machinery cost about a quarter of a proxied
request's CPU, and those endpoints take nothing but the Request. FastAPI still routes everything
else and documents every route, hot ones included, in the OpenAPI document.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infergate.http_errors import error_payload, render_exception
from infergate.limits.model import HEADERS_STATE, HTTP_STATE
from infergate.observability import count_request, log_access

PASSTHROUGH_PATHS = ("/health", "/metrics")
log = logging.getLogger("infergate.middleware")


def route_label(scope: Scope) -> str:
    """The route's path template (bounded label cardinality), with the /v1 prefix that FastAPI's
    included routers keep out of `route.path`, so /v1/x and its unprefixed twin stay apart."""
    fast = scope.get("state", {}).get("fast_route")
    if fast:
        return fast
    path = getattr(scope.get("route"), "path", None)
    if not path:
        return "unmatched"
    if scope["path"].startswith("/v1/") and not path.startswith("/v1/"):
        return "/v1" + path
    return path


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class BodyTooLarge(Exception):
    pass


Endpoint = Callable[[Request], Awaitable[Response]]


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        fast_routes: dict[tuple[str, str], Endpoint],
        asgi_app: ASGIApp,
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.fast_routes = fast_routes
        self.asgi_app = asgi_app  # what `request.app` must be for the endpoints on the fast path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = new_request_id()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        HTTP_STATE.set(state)  # where admission leaves the key's x-ratelimit-* headers (limits/)
        status_holder = [0]
        rid_header = (b"x-request-id", request_id.encode())
        started = [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header, *state.get(HEADERS_STATE, ())]
            await send(message)

        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_body
                except ValueError:
                    too_large = False
                if too_large:
                    await self._reject(scope, send_wrapper, request_id)
                    self._finish(scope, start, 413, request_id)
                    return
                break

        received = [0]

        async def receive_limited() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_body:
                    raise BodyTooLarge
            return message

        try:
            endpoint = self.fast_routes.get((scope["method"], scope["path"]))
            if endpoint is None:
                await self.app(scope, receive_limited, send_wrapper)
            else:
                await self._fast(endpoint, scope, receive_limited, send_wrapper)
        except BodyTooLarge:
            if not started[0]:
                await self._reject(scope, send_wrapper, request_id)
            status_holder[0] = status_holder[0] or 413
        except Exception as exc:  # the fast routes' errors, and whatever escaped FastAPI's handlers
            if started[0]:  # too late for an error answer: the connection is cut, the log says why
                log.error("request %s failed after its answer started", request_id, exc_info=exc)
            else:
                scope["app"] = self.asgi_app
                response = await render_exception(Request(scope, receive_limited), exc)
                await response(scope, receive, send_wrapper)
        self._finish(scope, start, status_holder[0] or 500, request_id)

    async def _fast(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.asgi_app
        scope["state"]["fast_route"] = scope["path"]
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    async def _reject(self, scope: Scope, send: Send, request_id: str) -> None:
        body = error_payload(
            413,
            {
                "message": f"Request body exceeds the limit of {self.max_body} bytes.",
                "type": "invalid_request_error",
                "param": None,
                "code": "request_too_large",
            },
            request_id,
            scope["path"],
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _finish(self, scope: Scope, start: float, status: int, request_id: str) -> None:
        """Metrics and the access-log line. An endpoint whose wire status is a compatibility quirk
        (pydo's 410 create) records what really happened in `state["outcome_status"]`."""
        elapsed = time.perf_counter() - start
        status = scope.get("state", {}).get("outcome_status", status)
        route_path = route_label(scope)
        count_request(route_path, scope["method"], status, elapsed)
        if scope["path"] in PASSTHROUGH_PATHS:
            return
        state = scope.get("state", {})
        log_access(
            {
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round(elapsed * 1000, 3),
                "key": state.get("key_uuid"),
                "model": state.get("model"),
                "client": (scope.get("client") or ("", 0))[0],
            }
        )
