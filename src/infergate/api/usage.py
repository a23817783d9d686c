"""GET /v2/gen-ai/usage: ledger totals over a time range, grouped by key, model or day (admin)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import json_response, platform_of
from infergate.auth import check_admin
from infergate.reports import build_report
from infergate.schemas.common import error_responses
from infergate.schemas.usage import UsageReport

router = APIRouter(tags=["usage"])


@router.get(
    "/v2/gen-ai/usage",
    response_model=UsageReport,
    responses=error_responses(400, 401),
    summary="Usage and cost from the ledger",
)
async def usage_report(
    request: Request,
    start: str | None = Query(None, description="ISO 8601 or epoch seconds; default end-30d"),
    end: str | None = Query(None, description="ISO 8601 or epoch seconds; default now"),
    group_by: str = Query("model", pattern="^(key|model|day)$"),
) -> Response:
    platform = platform_of(request)
    check_admin(request.headers.get("authorization"), platform.settings.admin_token)
    await platform.ledger.flush()  # what was answered before this call is in the report
    report = await asyncio.to_thread(build_report, platform.ledger_repo, start, end, group_by)
    return json_response(report)
