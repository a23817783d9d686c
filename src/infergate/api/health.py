"""Probes and metrics: GET /health, GET /ready, GET /metrics (no key)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from infergate.api.common import json_response, platform_of
from infergate.observability import metrics_payload
from infergate.schemas.common import error_responses

router = APIRouter(tags=["probes"])


@router.api_route("/health", methods=["GET", "HEAD"], summary="200 while the process lives")
async def health() -> Response:
    return json_response({"status": "ok"})


@router.api_route(
    "/ready",
    methods=["GET", "HEAD"],
    responses=error_responses(503),
    summary="200 when the database and default model can serve",
)
async def ready(request: Request) -> Response:
    reason = await asyncio.to_thread(platform_of(request).readiness)
    if reason:
        return json_response(
            {
                "error": {
                    "message": f"not ready: {reason}",
                    "type": "service_unavailable",
                    "param": None,
                    "code": "not_ready",
                }
            },
            status=503,
        )
    return json_response({"status": "ready"})


# documented as text/plain (Prometheus' text format), not FastAPI's default application/json
@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics() -> Response:
    payload, content_type = metrics_payload()
    return Response(payload, media_type=content_type)
