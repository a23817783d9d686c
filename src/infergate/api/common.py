"""Helpers every endpoint family shares: the platform, authentication, JSON bodies."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from infergate.errors import InvalidRequest
from infergate.http_errors import invalid_from_validation
from infergate.platform import Platform
from infergate.storage.keys import KeyRecord

M = TypeVar("M", bound=BaseModel)


def platform_of(request: Request) -> Platform:
    return request.app.state.platform


def request_id_of(request: Request) -> str:
    return request.scope["state"]["request_id"]


async def authenticate(request: Request) -> KeyRecord:
    record = await platform_of(request).key_cache.authenticate(request.headers.get("authorization"))
    request.scope["state"]["key_uuid"] = record.uuid
    return record


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        raise InvalidRequest("Request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    return body


def validate(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)
