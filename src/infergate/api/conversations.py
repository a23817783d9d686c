"""/v1/conversations: create, retrieve, update, delete, items (issue 10)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
