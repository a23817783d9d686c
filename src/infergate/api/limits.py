"""/v2/gen-ai/models/api_keys/{uuid}/limits: per-key limits (issue 11)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
