"""Usage page: tokens and cost per day, model and key over a range, charts, totals, CSV.

Every number comes from reports.build_report, the code behind GET /v2/gen-ai/usage, over the
same ledger and the same [start, end) range, so the page, the CSV and the API always agree.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from infergate.errors import InvalidRequest
from infergate.platform import Platform
from infergate.reports import build_report
from infergate.web.guard import Ctx, panel_page

router = APIRouter()
CSV_COLUMNS = (
    "requests",
    "failed_requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cost_usd",
    "estimated_requests",
)
MAX_FILLED_DAYS = 400
EARLIEST, LATEST = date(1970, 1, 1), date(9999, 12, 30)


def _range(request: Request) -> tuple[date, date]:
    """[start, end] as whole UTC days from the form (end inclusive); default: the last 30 days."""
    today = datetime.now(UTC).date()
    try:
        end = date.fromisoformat(request.query_params.get("end") or today.isoformat())
        start = date.fromisoformat(
            request.query_params.get("start") or (end - timedelta(days=29)).isoformat()
        )
    except ValueError:
        raise InvalidRequest("Dates must be written YYYY-MM-DD.", param="start") from None
    if start > end:
        raise InvalidRequest("The start date must not be after the end date.", param="start")
    if start < EARLIEST or end > LATEST:  # what the ledger's epoch-millisecond times can name
        raise InvalidRequest(f"Dates must be between {EARLIEST} and {LATEST}.", param="start")
    return start, end


def _reports(platform: Platform, start: date, end: date) -> dict[str, dict[str, Any]]:
    stop = (end + timedelta(days=1)).isoformat()  # the API's end is exclusive
    return {
        g: build_report(platform.ledger_repo, start.isoformat(), stop, g) for g in ("day", "model", "key")
    }


def _chart_data(reports: dict[str, dict[str, Any]], start: date, end: date) -> dict[str, Any]:
    by_day = {r["group"]: r for r in reports["day"]["usage"]}
    if (end - start).days < MAX_FILLED_DAYS:  # every day of the range, zero where nothing ran
        days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    else:
        days = sorted(by_day)
    empty: dict[str, Any] = {}

    def series(name: str) -> list[float]:
        return [by_day.get(d, empty).get(name, 0) for d in days]

    def named(group: str) -> dict[str, list[Any]]:
        rows = reports[group]["usage"]
        label = (
            (lambda r: r.get("key_name") or r["group"] or "(none)")
            if group == "key"
            else (lambda r: r["group"])
        )
        return {
            "names": [label(r) for r in rows],
            "input": [r["input_tokens"] for r in rows],
            "output": [r["output_tokens"] for r in rows],
            "cost": [r["cost_usd"] for r in rows],
        }

    return {
        "days": [int(datetime.fromisoformat(d).replace(tzinfo=UTC).timestamp()) for d in days],
        "input": series("input_tokens"),
        "output": series("output_tokens"),
        "cache_read": series("cache_read_tokens"),
        "cache_write": [
            a + b
            for a, b in zip(series("cache_write_5m_tokens"), series("cache_write_1h_tokens"), strict=True)
        ],
        "cost": series("cost_usd"),
        "models": named("model"),
        "keys": named("key"),
    }


async def usage_page(request: Request, ctx: Ctx) -> Response:
    try:
        start, end = _range(request)
    except InvalidRequest as exc:
        today = datetime.now(UTC).date()
        return ctx.render(
            request, "usage.html", 400, nav="usage", error=exc.message, start=today - timedelta(days=29),
            end=today, reports=None, chart_json="{}",
        )  # fmt: skip
    await ctx.platform.ledger.flush()  # what was answered before this page is in it
    reports = await asyncio.to_thread(_reports, ctx.platform, start, end)
    chart = orjson.dumps(_chart_data(reports, start, end)).decode()
    return ctx.render(
        request,
        "usage.html",
        nav="usage",
        error=None,
        start=start,
        end=end,
        reports=reports,
        chart_json=chart,
    )


async def usage_csv(request: Request, ctx: Ctx) -> Response:
    group = request.query_params.get("group_by", "day")
    if group not in ("day", "model", "key"):
        group = "day"
    try:
        start, end = _range(request)
    except InvalidRequest as exc:
        return Response(exc.message, status_code=400, media_type="text/plain")
    await ctx.platform.ledger.flush()
    report = (await asyncio.to_thread(_reports, ctx.platform, start, end))[group]
    out = io.StringIO()
    writer = csv.writer(out)
    head = [group, *(["key_name"] if group == "key" else []), *CSV_COLUMNS]
    writer.writerow(head)
    for row in [*report["usage"], {**report["totals"], "group": "TOTAL", "key_name": ""}]:
        writer.writerow(
            [
                row["group"],
                *([row.get("key_name") or ""] if group == "key" else []),
                *(f"{row[c]:.9f}" if c == "cost_usd" else row[c] for c in CSV_COLUMNS),  # exact nano-USD
            ]
        )
    name = f"infergate-usage-{group}-{start}-{end}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


router.add_api_route("/panel/usage", panel_page(usage_page), methods=["GET"])
router.add_api_route("/panel/usage.csv", panel_page(usage_csv), methods=["GET"])
