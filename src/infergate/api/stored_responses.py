"""GET/DELETE /v1/responses/{id}, input_items, cancel: the durable store's routes (issue 10)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
