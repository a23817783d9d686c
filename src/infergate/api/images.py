"""POST /v1/images/generations (issue 12)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
