"""Model access key management, /v2/gen-ai/models/api_keys, in DigitalOcean's shapes (admin token)."""

from __future__ import annotations

import asyncio
import logging
import math

from fastapi import APIRouter, Query
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import json_body, json_response, platform_of, validate
from infergate.auth import check_admin
from infergate.errors import InvalidRequest
from infergate.observability import REGISTRY
from infergate.platform import Platform
from infergate.schemas.common import error_responses
from infergate.schemas.keys import APIKeyInfoResponse, APIKeyListResponse, CreateKeyBody, RenameKeyBody

router = APIRouter(prefix="/v2/gen-ai/models/api_keys", tags=["model access keys"])
ERRORS = error_responses(400, 401, 404, 413)
PYDO_USER_AGENT = "azsdk-python-pydo/"
NO_STORE = {"Cache-Control": "no-store"}  # answers carrying a secret: no cache or proxy may keep them
KEY_CHANGES = Counter(
    "infergate_key_changes_total",
    "Model access keys created, renamed, regenerated, deleted",
    ["action"],
    registry=REGISTRY,
)
log = logging.getLogger("infergate.keys")


def _changed(request: Request, action: str, key_uuid: str, note: str = "") -> None:
    """Counted and logged (never the secret) once the change is made, whatever status answers it."""
    KEY_CHANGES.labels(action).inc()
    log.info(
        "model access key %s %s (request %s)%s",
        key_uuid,
        action,
        request.scope["state"].get("request_id"),
        note,
    )


def _admin(request: Request) -> Platform:
    platform = platform_of(request)
    check_admin(request.headers.get("authorization"), platform.settings.admin_token)
    return platform


def _uuid(value: str) -> str:
    if len(value) > 64:
        raise InvalidRequest("api_key_uuid is not a valid key id", param="api_key_uuid")
    return value


@router.post(
    "",
    response_model=APIKeyInfoResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CreateKeyBody.model_json_schema()}},
        }
    },
    summary="Create a model access key; the secret is returned only here",
)
async def create_key(request: Request) -> Response:
    platform = _admin(request)
    body = validate(CreateKeyBody, await json_body(request))
    record, secret = await asyncio.to_thread(platform.keys.create, body.name, "admin")
    await platform.key_cache.changed()
    if PYDO_USER_AGENT in request.headers.get("user-agent", ""):
        # pydo 0.44 believes this DigitalOcean endpoint retired and accepts only a 410 answer; any
        # other status raises after the key was made, losing the secret. Its generated client gets
        # the created key with status 410, so `client.genai.create_model_api_key(...)` works. The
        # metrics and the access log count it as what it is, a successful create (200).
        _changed(request, "created", record.uuid, ", answered 410 for pydo compatibility")
        request.scope["state"]["outcome_status"] = 200
        return json_response(
            {"api_key_info": record.info(secret)},
            status=410,
            headers={**NO_STORE, "x-infergate-compat": "pydo-create-410"},
        )
    _changed(request, "created", record.uuid)
    return json_response({"api_key_info": record.info(secret)}, headers=NO_STORE)


@router.get("", response_model=APIKeyListResponse, responses=ERRORS, summary="List model access keys")
async def list_keys(
    request: Request, page: int = Query(1, ge=1, le=1_000_000), per_page: int = Query(20, ge=1, le=200)
) -> Response:
    platform = _admin(request)
    records, total = await asyncio.to_thread(platform.keys.list, page, per_page)
    pages = max(1, math.ceil(total / per_page))
    url = request.url

    def link(p: int) -> str:
        return str(url.include_query_params(page=p, per_page=per_page))

    links = {
        "first": link(1),
        "previous": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < pages else None,
        "last": link(pages),
    }
    return json_response(
        {
            "api_key_infos": [r.info() for r in records],
            "links": {"pages": links},
            "meta": {"page": page, "pages": pages, "total": total},
        }
    )


@router.put(
    "/{api_key_uuid}",
    response_model=APIKeyInfoResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RenameKeyBody.model_json_schema()}},
        }
    },
    summary="Rename a model access key",
)
async def rename_key(request: Request, api_key_uuid: str) -> Response:
    platform = _admin(request)
    body = validate(RenameKeyBody, await json_body(request))
    if body.api_key_uuid not in (None, api_key_uuid):
        raise InvalidRequest("api_key_uuid in the body does not match the path", param="api_key_uuid")
    record = await asyncio.to_thread(platform.keys.rename, _uuid(api_key_uuid), body.name)
    await platform.key_cache.changed()
    _changed(request, "renamed", record.uuid)
    return json_response({"api_key_info": record.info()})


@router.put(
    "/{api_key_uuid}/regenerate",
    response_model=APIKeyInfoResponse,
    responses=ERRORS,
    summary="Issue a new secret; the old one stops working at once",
)
async def regenerate_key(request: Request, api_key_uuid: str) -> Response:
    platform = _admin(request)
    record, secret = await asyncio.to_thread(platform.keys.regenerate, _uuid(api_key_uuid))
    await platform.key_cache.changed()
    _changed(request, "regenerated", record.uuid)
    return json_response({"api_key_info": record.info(secret)}, headers=NO_STORE)


@router.delete(
    "/{api_key_uuid}",
    response_model=APIKeyInfoResponse,
    responses=ERRORS,
    summary="Delete a model access key; it stops working at once",
)
async def delete_key(request: Request, api_key_uuid: str) -> Response:
    platform = _admin(request)
    record = await asyncio.to_thread(platform.keys.delete, _uuid(api_key_uuid))
    await platform.key_cache.changed()
    _changed(request, "deleted", record.uuid)
    return json_response({"api_key_info": record.info()})
