"""/v1/async-invoke: durable async jobs (fal-style image, speech ... models), DigitalOcean's shapes.

Beyond DigitalOcean: cancel, a listing with status/tag/model filters, a webhook with its delivery
log. A job is visible only to the key that created it, or to the admin token (others get 404).
The work is done by workers (jobs/worker.py); this module only writes and reads job rows.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response

from infergate.api.common import authenticate, json_body, json_response, platform_of, validate
from infergate.auth import check_admin
from infergate.errors import AuthenticationFailed, InvalidRequest, NotFound
from infergate.jobs import invoke
from infergate.jobs.queue import STATUSES, Job
from infergate.jobs.webhooks import check_webhook_url
from infergate.schemas.async_invoke import (
    AsyncInvokeRequest,
    JobList,
    JobObject,
    WebhookLog,
    iso,
    job_object,
)
from infergate.schemas.common import INFERENCE_ERRORS, error_responses

router = APIRouter()
READ_ERRORS = error_responses(400, 401, 404)
OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": AsyncInvokeRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            }
        },
    }
}


async def _caller(request: Request) -> tuple[str | None, bool]:
    """(key uuid, is admin): a model access key sees its own jobs, the admin token every job."""
    platform = platform_of(request)
    try:
        check_admin(request.headers.get("authorization"), platform.settings.admin_token)
        return None, True
    except AuthenticationFailed:
        key = await authenticate(request)
        return key.uuid, False


def _render(request: Request, job: Job) -> dict:
    body = job_object(job)
    media = getattr(platform_of(request), "media", None)
    refresh = getattr(media, "refresh_urls", None)
    if refresh is not None and body["output"] is not None:
        # media URLs re-signed, absolute for this client: they expire, the job does not
        body["output"] = refresh(body["output"], str(request.base_url).rstrip("/"))
    return body


async def _job(request: Request, request_id: str) -> Job:
    key_uuid, admin = await _caller(request)
    job = await platform_of(request).jobs.get(request_id, key_uuid, admin=admin)
    if job is None or job.kind != invoke.KIND:
        raise NotFound(f"No async-invoke job '{request_id}'.", param="request_id", code="job_not_found")
    return job


@router.post(
    "/async-invoke",
    status_code=202,
    response_model=JobObject,
    responses=INFERENCE_ERRORS,
    openapi_extra=OPENAPI,
    summary="Start an async job (fal-style input); answers with the QUEUED job",
)
async def create_job(request: Request) -> Response:
    platform = platform_of(request)
    key = await authenticate(request)
    params = validate(AsyncInvokeRequest, await json_body(request))
    spec = invoke.check_submission(platform, params.model_id, params.input)
    request.scope["state"]["model"] = spec.id
    if params.webhook_url is not None:
        await check_webhook_url(params.webhook_url)
    job = await platform.jobs.submit(
        invoke.KIND,
        {"input": params.input},
        key_uuid=key.uuid,
        tags=[t.model_dump() for t in params.tags or []],
        webhook_url=params.webhook_url,
        model_id=params.model_id,
    )
    return json_response(job_object(job), status=202)  # DigitalOcean's spec: 202 Accepted


@router.get(
    "/async-invoke", response_model=JobList, responses=READ_ERRORS, summary="List async jobs, newest first"
)
async def list_jobs(
    request: Request,
    status: list[str] | None = Query(None, description="QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED"),
    tag: list[str] | None = Query(None, description="key:value; every tag given must match"),
    model_id: str | None = Query(None, max_length=200),
    limit: int = Query(20, ge=1, le=100),
    after: str | None = Query(
        None, max_length=64, description="request_id of the last job of the previous page"
    ),
    caller: tuple[str | None, bool] = Depends(_caller),  # a dependency: a 401 comes before any query 400
) -> Response:
    key_uuid, admin = caller
    statuses = [s.strip().upper() for value in status or [] for s in value.split(",") if s.strip()]
    for s in statuses:
        if s not in STATUSES:
            raise InvalidRequest(f"status '{s}' is not one of {', '.join(STATUSES)}", param="status")
    tags = []
    for value in tag or []:
        name, sep, tag_value = value.partition(":")
        if not sep or not name:
            raise InvalidRequest(f"tag '{value[:100]}' must be key:value", param="tag")
        tags.append((name, tag_value))
    jobs, more = await platform_of(request).jobs.list(
        invoke.KIND,
        key_uuid,
        admin=admin,
        statuses=statuses,
        tags=tags,
        model_id=model_id,
        limit=limit,
        after=after,
    )
    data = [{**_render(request, j), "tags": j.tags} for j in jobs]
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": jobs[0].id if jobs else None,
            "last_id": jobs[-1].id if jobs else None,
            "has_more": more,
        }
    )


@router.get(
    "/async-invoke/{request_id}/status",
    response_model=JobObject,
    responses=READ_ERRORS,
    summary="A job's status (the job object)",
)
async def job_status(request: Request, request_id: str) -> Response:
    return json_response(_render(request, await _job(request, request_id)))


@router.get(
    "/async-invoke/{request_id}",
    response_model=JobObject,
    responses=READ_ERRORS,
    summary="A job with its output once COMPLETED",
)
async def get_job(request: Request, request_id: str) -> Response:
    return json_response(_render(request, await _job(request, request_id)))


@router.post(
    "/async-invoke/{request_id}/cancel",
    response_model=JobObject,
    responses=error_responses(401, 404, 409),
    summary="Cancel a queued or running job (409 once it has ended)",
)
async def cancel_job(request: Request, request_id: str) -> Response:
    job = await _job(request, request_id)
    key_uuid, admin = (None, True) if job.key_uuid is None else (job.key_uuid, False)
    cancelled = await platform_of(request).jobs.cancel(job.id, key_uuid, admin=admin)
    if cancelled is None:
        raise NotFound(f"No async-invoke job '{request_id}'.", param="request_id", code="job_not_found")
    return json_response(_render(request, cancelled))


@router.get(
    "/async-invoke/{request_id}/webhook",
    response_model=WebhookLog,
    responses=READ_ERRORS,
    summary="The job's webhook and its delivery log",
)
async def webhook_log(request: Request, request_id: str) -> Response:
    job = await _job(request, request_id)
    if not job.webhook_url:
        raise NotFound(f"The job '{request_id}' has no webhook_url.", param="request_id", code="no_webhook")
    rows = await asyncio.to_thread(platform_of(request).jobs.deliveries, job.id)
    deliveries = [
        {
            "attempt": r["attempt"],
            "at": iso(r["at_us"]),
            "status_code": r["status_code"],
            "error": r["error"],
            "duration_ms": r["duration_ms"],
        }
        for r in rows
    ]
    return json_response({"url": job.webhook_url, "status": job.webhook_status, "deliveries": deliveries})
