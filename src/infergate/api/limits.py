"""/v2/gen-ai/models/api_keys/{uuid}/limits: a key's rate, concurrency and budget limits (admin token)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import json_body, json_response, platform_of
from infergate.auth import check_admin
from infergate.limits import KeyLimits
from infergate.platform import Platform
from infergate.schemas.common import error_responses
from infergate.schemas.limits import KeyLimitsBody, KeyLimitsResponse

router = APIRouter(prefix="/v2/gen-ai/models/api_keys", tags=["model access keys"])
ERRORS = error_responses(400, 401, 404, 413)


def _admin(request: Request) -> Platform:
    platform = platform_of(request)
    check_admin(request.headers.get("authorization"), platform.settings.admin_token)
    return platform


@router.get(
    "/{api_key_uuid}/limits",
    response_model=KeyLimitsResponse,
    responses=ERRORS,
    summary="A key's limits, its cost this month and what its requests in flight reserve",
)
async def get_limits(request: Request, api_key_uuid: str) -> Response:
    status = await _admin(request).limits.get(api_key_uuid)
    return json_response(status.to_dict())


@router.put(
    "/{api_key_uuid}/limits",
    response_model=KeyLimitsResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": KeyLimitsBody.model_json_schema()}},
        }
    },
    summary="Set a key's limits (null: no limit); every replica applies them at once",
)
async def put_limits(request: Request, api_key_uuid: str) -> Response:
    platform = _admin(request)
    limits = KeyLimits.from_dict(await json_body(request))
    status = await platform.limits.set(api_key_uuid, limits)
    return json_response(status.to_dict())
