"""The one place where failures become HTTP answers.

Inference routes answer in OpenAI's shape `{"error": {message, type, param, code}}`; management
routes (/v2) add DigitalOcean's top-level `id`, `message` and `request_id` to the same object so
both kinds of client read what they expect.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from infergate.errors import InfergateError, InvalidRequest

log = logging.getLogger("infergate.errors")
STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
DO_IDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
}


def error_payload(status: int, error: dict[str, Any], request_id: str | None, path: str) -> bytes:
    body: dict[str, Any] = {"error": error}
    if path.startswith("/v2/"):
        body.update(id=DO_IDS.get(status, "server_error"), message=error["message"], request_id=request_id)
    return orjson.dumps(body)


def error_response(
    request: Request, status: int, error: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    return Response(
        error_payload(status, error, request_id, request.url.path),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _json_path(loc: tuple[Any, ...]) -> list[str]:
    """pydantic's error location as a JSON path: without union branch names ('str', 'list[...]') and
    without the discriminator value that follows a tagged union ('...content.0.text.cache_control')."""
    path: list[str] = []
    tag_follows = False
    for p in loc:
        if p == "body":
            continue
        if isinstance(p, str) and p[:1].islower() and ("[" in p or p in {"str", "int", "float", "bool"}):
            tag_follows = p.startswith(("tagged-union[", "list[tagged-union["))
            continue
        if tag_follows and isinstance(p, str):
            tag_follows = False
            continue
        path.append(str(p))
    return path


def _unlocated(loc: tuple[Any, ...], located: bool) -> tuple[Any, ...]:
    if located and loc and loc[0] in ("query", "path", "header", "cookie"):
        return loc[1:]
    return loc


def validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """The first error, phrased for a person: `messages.0.role: Input should be ...`.

    With a union (content: str | list of parts) pydantic reports one error per branch; of those
    under the first error's field, the one reaching deepest is where the client went wrong (a bad
    `cache_control.ttl`, not "content should be a string")."""
    errors = exc.errors()
    if not errors:
        return "Invalid request body", None
    # a query/path/header parameter is named as the client sent it (`limit`, not `query.limit`)
    located = isinstance(exc, RequestValidationError)
    paths = [_json_path(_unlocated(tuple(e.get("loc", ())), located)) for e in errors]
    same_field = [i for i in range(len(errors)) if paths[i][: len(paths[0])] == paths[0]]
    deepest = max(same_field, key=lambda i: len(paths[i]))  # the first one on ties
    first = errors[deepest]
    param = ".".join(paths[deepest]) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


def invalid_from_validation(exc: ValidationError) -> InvalidRequest:
    message, param = validation_message(exc)
    return InvalidRequest(message, param=param)


async def handle_infergate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InfergateError)
    return error_response(request, exc.status, exc.to_dict(), exc.headers)


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError | ValidationError)
    message, param = validation_message(exc)
    return error_response(
        request,
        400,
        {"message": message, "type": "invalid_request_error", "param": param, "code": "invalid_request"},
    )


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    if status == 404:
        message = f"Unknown route: {request.method} {request.url.path}"
    return error_response(
        request,
        status,
        {"message": message, "type": STATUS_TYPES.get(status, "server_error"), "param": None, "code": None},
        getattr(exc, "headers", None),
    )


async def handle_database_error(request: Request, exc: Exception) -> Response:
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        request,
        503,
        {
            "message": "The database is unavailable; try again shortly.",
            "type": "service_unavailable",
            "param": None,
            "code": "database_unavailable",
        },
        {"Retry-After": "2"},
    )


INTERNAL_ERROR = {
    "message": "Internal server error; the request id names it in the log.",
    "type": "server_error",
    "param": None,
    "code": "internal_error",
}


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    log.error(
        "unhandled error on %s %s (request %s)", request.method, request.url.path, request_id, exc_info=exc
    )
    return error_response(request, 500, dict(INTERNAL_ERROR))


def exception_handlers() -> dict[Any, Any]:
    """FastAPI's handlers. Not `Exception`: Starlette would answer it outside every middleware
    (no request id, no CORS, no metrics); GatewayMiddleware renders those with `render_exception`."""
    return {
        InfergateError: handle_infergate_error,
        RequestValidationError: handle_validation_error,
        ValidationError: handle_validation_error,
        HTTPException: handle_http_exception,
        DBAPIError: handle_database_error,
    }


async def render_exception(request: Request, exc: Exception) -> Response:
    """The same mapping as `exception_handlers`, unexpected errors included (a 500 in OpenAI's
    shape): for the fast routes and for whatever escapes FastAPI's router."""
    for kind, handler in exception_handlers().items():
        if isinstance(exc, kind):
            return await handler(request, exc)
    return await handle_unexpected(request, exc)
