"""Model listings: GET /v1/models (OpenAI) and GET /v2/gen-ai/models (DigitalOcean + `data`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import authenticate, json_response, platform_of
from infergate.auth import check_admin
from infergate.catalog import ModelSpec
from infergate.errors import AuthenticationFailed, NotFound
from infergate.schemas.common import error_responses
from infergate.schemas.models import DOModelList, OpenAIModel, OpenAIModelList

if TYPE_CHECKING:
    from infergate.platform import Platform

router = APIRouter()
v2_router = APIRouter()
MODEL_NAMESPACE = uuid.UUID("5b0c3a4e-8f1d-4c2b-9a77-1e2f3d4c5b6a")


def openai_model(spec: ModelSpec) -> dict:
    return {"id": spec.id, "object": "model", "created": spec.created, "owned_by": spec.owned_by}


def do_model(spec: ModelSpec) -> dict:
    created = datetime.fromtimestamp(spec.created, UTC).isoformat().replace("+00:00", "Z")
    return {
        "uuid": str(uuid.uuid5(MODEL_NAMESPACE, spec.id)),
        "id": spec.id,
        "name": spec.name or spec.id,
        "created_at": created,
        "updated_at": created,
        "is_foundational": True,
        "version": {"major": 1, "minor": 0, "patch": 0},
        "url": None,
        "parent_uuid": None,
        "upload_complete": True,
        "agreement": None,
    }


def servable(platform: Platform) -> list[ModelSpec]:
    """Catalog entries that can answer: their engine exists and says it can serve (an idle-unloaded
    local model can: it loads again on demand). A model with no engine in this build, or whose
    engine failed to start or to load its weights, is left out, so clients never pick a model that
    only answers errors."""
    engines = platform.engines
    return [
        spec
        for spec in platform.catalog
        if (engine := engines.get(spec.id)) is not None and engine.readiness() is None
    ]


@router.get(
    "/models",
    response_model=OpenAIModelList,
    responses=error_responses(401),
    summary="List the models this server serves",
)
async def list_models(request: Request) -> Response:
    await authenticate(request)
    return json_response(
        {"object": "list", "data": [openai_model(s) for s in servable(platform_of(request))]}
    )


@router.get(
    "/models/{model_id:path}",  # :path: ids and aliases may hold slashes (fal-ai/fast-sdxl)
    response_model=OpenAIModel,
    responses=error_responses(401, 404),
    summary="Retrieve a model (OpenAI compatible); an alias answers with the id asked for",
)
async def retrieve_model(request: Request, model_id: str) -> Response:
    await authenticate(request)
    platform = platform_of(request)
    spec = platform.catalog.get(model_id)
    # the same rule as the listing: a model that only answers errors is not offered
    engine = platform.engines.get(spec.id) if spec is not None else None
    if spec is None or engine is None or engine.readiness() is not None:
        raise NotFound(
            f"The model '{model_id}' does not exist; GET /v1/models lists the available ones.",
            param="model",
            code="model_not_found",
        )
    return json_response({**openai_model(spec), "id": model_id})  # OpenAI echoes the id asked for


@v2_router.get(
    "/v2/gen-ai/models",
    response_model=DOModelList,
    responses=error_responses(401),
    summary="List models (DigitalOcean shape); accepts a model access key or the admin token",
)
async def list_models_v2(request: Request) -> Response:
    platform = platform_of(request)
    try:
        check_admin(request.headers.get("authorization"), platform.settings.admin_token)
    except AuthenticationFailed:
        await authenticate(request)  # the gradient SDK sends the model access key here
    specs = servable(platform)
    base = str(request.url.remove_query_params(["page", "per_page"]))
    return json_response(
        {
            "models": [do_model(s) for s in specs],
            "links": {"pages": {"first": base, "previous": None, "next": None, "last": base}},
            "meta": {"page": 1, "pages": 1, "total": len(specs)},
            "object": "list",
            "data": [openai_model(s) for s in specs],
        }
    )
