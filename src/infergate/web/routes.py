"""The control panel's pages at / (issue 11)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
