"""/v1/async-invoke: durable async jobs (issue 12)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
