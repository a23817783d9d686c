"""Jobs page (async-invoke and background responses) and stored responses with their chain.

Read-only views over the jobs queue (platform.jobs, as GET /v1/async-invoke lists them, here
for every key) and the stored responses tables; the admin sees every key's work.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter
from sqlalchemy import and_, or_, select
from starlette.requests import Request
from starlette.responses import Response

from infergate.platform import Platform
from infergate.storage.responses import response_items, responses
from infergate.web.data import all_keys
from infergate.web.guard import Ctx, panel_page

router = APIRouter()
JOB_KINDS = {"async-invoke": "Async invoke", "response": "Background responses"}
STATUSES = ("QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED")
PAGE = 50
MAX_PAGE = 200
MAX_CHAIN = 100


def _key_names(platform: Platform) -> dict[str, str]:
    return {k.uuid: k.name for k in all_keys(platform)}


def _seconds(start_us: int | None, end_us: int | None) -> str:
    if start_us is None or end_us is None:
        return "—"
    return f"{(end_us - start_us) / 1e6:.2f} s"


def _media(output: Any) -> dict[str, list[dict[str, Any]]]:
    """Images and audio in a job's output (fal's shapes: `images [...]`, `audio {...}`)."""
    found: dict[str, list[dict[str, Any]]] = {"images": [], "audio": []}
    if isinstance(output, dict):
        found["images"] = [i for i in output.get("images") or [] if isinstance(i, dict) and i.get("url")]
        audio = output.get("audio")
        if isinstance(audio, dict) and audio.get("url"):
            found["audio"] = [audio]
    return found


async def jobs_page(request: Request, ctx: Ctx) -> Response:
    kind = request.query_params.get("kind", "async-invoke")
    kind = kind if kind in JOB_KINDS else "async-invoke"
    status = request.query_params.get("status", "")
    statuses = (status,) if status in STATUSES else ()
    after = request.query_params.get("after") or None
    found, more = await ctx.platform.jobs.list(kind, admin=True, statuses=statuses, limit=PAGE, after=after)
    names = await asyncio.to_thread(_key_names, ctx.platform)
    rows = [
        {
            "job": job,
            "key_name": names.get(job.key_uuid or "", job.key_uuid or "—"),
            "created_ms": job.created_us // 1000,
            "waited": _seconds(job.created_us, job.started_us),
            "ran": _seconds(job.started_us, job.completed_us),
            "media": _media(job.output),
            "output_json": orjson.dumps(job.output, option=orjson.OPT_INDENT_2).decode()[:4000]
            if job.output is not None
            else "",
        }
        for job in found
    ]
    return ctx.render(
        request,
        "jobs.html",
        nav="jobs",
        rows=rows,
        kind=kind,
        kinds=JOB_KINDS,
        chosen_status=status if statuses else "",
        statuses=STATUSES,
        next_after=found[-1].id if more and found else None,
    )


def _text_of(item: dict[str, Any]) -> str:
    """The readable text of a response item (message parts), else a compact JSON of it."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        if texts:
            return "\n".join(texts)
    shown = {k: v for k, v in item.items() if k not in ("id", "status")}
    return orjson.dumps(shown).decode()[:2000]


def _list_responses(platform: Platform, limit: int, after: str | None) -> tuple[list[dict[str, Any]], bool]:
    """A page of live responses, newest first, after the cursor response (by created_ms, then id:
    several responses can share a millisecond); True when there are more."""
    now = int(time.time() * 1000)
    stmt = (
        select(responses)
        .where(responses.c.expires_ms > now)  # what the API would still serve
        .order_by(responses.c.created_ms.desc(), responses.c.id.desc())
        .limit(limit + 1)
    )
    with platform.db.connect() as conn:
        if after:
            cursor = conn.execute(select(responses.c.created_ms).where(responses.c.id == after)).first()
            if cursor is not None:  # a cursor deleted meanwhile: start from the newest again
                ms = cursor[0]
                stmt = stmt.where(
                    or_(
                        responses.c.created_ms < ms,
                        and_(responses.c.created_ms == ms, responses.c.id < after),
                    )
                )
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
        more = len(rows) > limit
        rows = rows[:limit]
        # a chain link is a link only while its target can still be opened (not deleted or expired)
        wanted = {r["previous_response_id"] for r in rows if r["previous_response_id"]}
        live = set()
        if wanted:
            live = set(
                conn.execute(
                    select(responses.c.id).where(responses.c.id.in_(wanted), responses.c.expires_ms > now)
                ).scalars()
            )
    for row in rows:
        body = orjson.loads(row.pop("body"))
        row["model"] = body.get("model")
        messages = [i for i in body.get("output") or [] if isinstance(i, dict) and i.get("type") == "message"]
        row["output_text"] = "".join(_text_of(i) for i in messages)[:300]
        row["previous_live"] = row["previous_response_id"] in live
    return rows, more


def _chain(platform: Platform, response_id: str) -> list[dict[str, Any]]:
    """The response and its predecessors (previous_response_id), oldest first, with their items."""
    chain: list[dict[str, Any]] = []
    with platform.db.connect() as conn:
        current: str | None = response_id
        while current and len(chain) < MAX_CHAIN:
            live = responses.c.expires_ms > int(time.time() * 1000)
            row = conn.execute(select(responses).where(responses.c.id == current, live)).mappings().first()
            if row is None:
                break
            entry = dict(row)
            body = orjson.loads(entry.pop("body"))
            entry["model"] = body.get("model")
            entry["usage"] = body.get("usage")
            items = conn.execute(
                select(response_items.c.kind, response_items.c.item)
                .where(response_items.c.response_id == current)
                .order_by(response_items.c.id)
            ).all()
            entry["items"] = []
            for kind, raw in items:
                item = orjson.loads(raw)
                entry["items"].append(
                    {"kind": kind, "role": item.get("role") or item.get("type"), "text": _text_of(item)}
                )
            chain.append(entry)
            current = entry["previous_response_id"]
    chain.reverse()
    return chain


def _limit(text: str) -> int:
    return min(int(text), MAX_PAGE) if text.isdigit() and int(text) > 0 else PAGE


async def responses_page(request: Request, ctx: Ctx) -> Response:
    limit = _limit(request.query_params.get("limit", ""))
    after = request.query_params.get("after") or None
    rows, more = await asyncio.to_thread(_list_responses, ctx.platform, limit, after)
    names = await asyncio.to_thread(_key_names, ctx.platform)
    return ctx.render(
        request,
        "responses.html",
        nav="responses",
        rows=rows,
        names=names,
        limit=limit,
        paged=after is not None,
        next_after=rows[-1]["id"] if more and rows else None,
    )


async def response_detail(request: Request, ctx: Ctx) -> Response:
    response_id = request.path_params["response_id"]
    chain = await asyncio.to_thread(_chain, ctx.platform, response_id)
    if not chain:
        return ctx.render(request, "error.html", 404, title="Not found", message="No such stored response.")
    names = await asyncio.to_thread(_key_names, ctx.platform)
    return ctx.render(request, "response_chain.html", nav="responses", chain=chain, names=names)


router.add_api_route("/panel/jobs", panel_page(jobs_page), methods=["GET"])
router.add_api_route("/panel/responses", panel_page(responses_page), methods=["GET"])
router.add_api_route("/panel/responses/{response_id}", panel_page(response_detail), methods=["GET"])
