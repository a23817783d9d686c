"""Shapes shared by every endpoint family: the error object and its OpenAPI responses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape; /v2 answers also carry DigitalOcean's id/message/request_id."""

    model_config = ConfigDict(extra="allow")
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route can answer."""
    text = {
        400: "Invalid request",
        401: "Missing or invalid key",
        404: "Not found",
        409: "Conflict",
        413: "Body too large",
        422: "Unprocessable",
        429: "Too many requests",
        502: "Upstream error",
        503: "Unavailable",
        504: "Upstream timeout",
    }
    return {s: {"model": ErrorBody, "description": text.get(s, "Error")} for s in statuses}


INFERENCE_ERRORS = error_responses(400, 401, 404, 413, 429, 502, 503, 504)
