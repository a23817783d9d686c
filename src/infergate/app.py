"""Builds the ASGI app: routes, middleware, lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.middleware.cors import CORSMiddleware

from infergate import __version__
from infergate.api import (
    async_invoke,
    audio,
    chat,
    conversations,
    health,
    images,
    keys,
    limits,
    media,
    models,
    responses,
    stored_responses,
    usage,
)
from infergate.config import Settings
from infergate.http_errors import exception_handlers
from infergate.middleware import GatewayMiddleware
from infergate.observability import ACCESS_LOG, setup_logging
from infergate.platform import Platform
from infergate.web import routes as web_routes

log = logging.getLogger("infergate")


# Hot routes dispatched by GatewayMiddleware without FastAPI's router (see middleware.py).
FAST_ROUTES = {
    (method, prefix + path): endpoint
    for prefix in ("/v1", "")
    for method, path, endpoint in (
        ("POST", "/chat/completions", chat.create_chat_completion),
        ("POST", "/responses", responses.create_response),
        ("GET", "/models", models.list_models),
    )
}


async def _flush_access_log_forever() -> None:
    while True:
        await asyncio.sleep(0.2)
        ACCESS_LOG.flush()


def inference_router() -> APIRouter:
    router = APIRouter(tags=["inference"])
    router.include_router(models.router)
    router.include_router(chat.router)
    router.include_router(audio.router)
    router.include_router(responses.router)
    router.include_router(stored_responses.router)
    router.include_router(conversations.router)
    router.include_router(images.router)
    router.include_router(async_invoke.router)
    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    setup_logging(settings.access_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform = Platform(settings)
        await platform.start()
        app.state.platform = platform
        flusher = asyncio.create_task(_flush_access_log_forever())
        log.info(
            "infergate %s ready: %d models, data in %s", __version__, len(platform.catalog), settings.data_dir
        )
        try:
            yield
        finally:
            flusher.cancel()
            await platform.close()  # after the server drained in-flight requests: flush the ledger
            ACCESS_LOG.close()
            log.info("infergate stopped; ledger flushed")

    app = FastAPI(
        title="infergate",
        version=__version__,
        lifespan=lifespan,
        exception_handlers=exception_handlers(),
        description="Self-hosted serverless inference, compatible with DigitalOcean Gradient and OpenAI.",
    )
    app.include_router(inference_router(), prefix="/v1")
    # The gradient SDK with base_url sends inference calls without /v1: serve both spellings.
    app.include_router(inference_router(), include_in_schema=False)
    app.include_router(models.v2_router)
    app.include_router(keys.router)
    app.include_router(usage.router)
    app.include_router(health.router)
    app.include_router(limits.router)
    app.include_router(media.router)
    app.include_router(web_routes.router)
    _hoist_request_body_defs(app)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=settings.max_body_bytes,
        fast_routes=FAST_ROUTES if settings.fast_routes else {},
        asgi_app=app,
    )
    # CORS outermost: it must also wrap the fast-path routes and the 413 answers of GatewayMiddleware.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-request-id"],
            max_age=600,
        )
    return app


def _hoist_request_body_defs(app: FastAPI) -> None:
    """Request bodies documented through `openapi_extra` carry their sub-schemas in `$defs`, with
    refs written as `#/components/schemas/...`: move them there so every ref resolves."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                for name, sub in content.get("schema", {}).pop("$defs", {}).items():
                    components.setdefault(name, sub)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
