"""POST /v1/responses: create a response (issue 10; owned by the responses helper)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
