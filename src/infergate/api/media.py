"""GET /media/...: signed URLs of generated files (issue 12)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
