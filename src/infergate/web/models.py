"""Models page: the catalog with live status, the playground and ready-to-copy snippets."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from infergate.schemas.images import allowed_sizes
from infergate.web.data import model_rows, servable_ids
from infergate.web.guard import Ctx, panel_page
from infergate.web.playground import router as playground_router
from infergate.web.snippets import snippet_sets

router = APIRouter()
router.include_router(playground_router)


def base_url(request: Request) -> str:
    """This server as the browser reached it (what a client on the same network would use)."""
    return str(request.base_url).rstrip("/")


async def models_page(request: Request, ctx: Ctx) -> Response:
    chat_models = servable_ids(ctx.platform, "chat")
    chosen = request.query_params.get("model")
    if chosen not in chat_models:
        chosen = chat_models[0] if chat_models else "MODEL_ID"
    image_models = servable_ids(ctx.platform, "image")
    # each image model's sizes (what POST /v1/images/generations accepts) and its default
    image_sizes = {}
    for model_id in image_models:
        spec = ctx.platform.catalog.get(model_id)
        if spec is not None:
            default = spec.default_size or (spec.sizes[0] if spec.sizes else "1024x1024")
            sizes = allowed_sizes(spec)
            if default not in sizes:  # a catalog default_size is accepted even when not listed
                sizes.append(default)
            image_sizes[model_id] = {"sizes": sizes, "default": default}
    return ctx.render(
        request,
        "models.html",
        nav="models",
        models=model_rows(ctx.platform),
        chat_models=chat_models,
        tts_models=servable_ids(ctx.platform, "tts"),
        image_models=image_models,
        image_sizes=image_sizes,
        chosen=chosen,
        base=base_url(request),
        snippet_sets=snippet_sets(base_url(request)),
    )


async def models_status(request: Request, ctx: Ctx) -> Response:
    """The status table alone: the page refreshes it every few seconds (htmx)."""
    return ctx.render(request, "models_status.html", models=model_rows(ctx.platform))


router.add_api_route("/panel/models", panel_page(models_page), methods=["GET"])
router.add_api_route("/panel/models/status", panel_page(models_status), methods=["GET"])
