"""Background responses: `background: true` answers at once (`queued`) and runs as a durable job.

- The response row (status `queued`, its input items) is stored, then a job of kind `response`
  (id = the response id) is submitted to the job queue (jobs/): it survives restarts, and any
  worker process sharing the database may run it.
- The handler runs the runner (responses/runner.py) and stores every event it yields (for
  `GET /v1/responses/{id}?stream=true&starting_after=N`), then the final response.
- A job run again after its worker died: a response that had not streamed anything yet is
  simply run again (billed once: the ledger row is keyed by the response id); one whose events
  were already delivered is marked `failed` with the reason, never left `in_progress`.
- A sweeper marks `failed` any active background response whose job is gone or finished (the
  queue gives up on a job whose workers kept dying, without calling the handler).
- Cancel: the row becomes `cancelled` (final: a late result never overwrites it) and the job is
  cancelled, which stops the handler's task wherever it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from infergate.errors import Conflict, InfergateError, InvalidRequest, Unavailable
from infergate.output_limit import check_output_limit
from infergate.storage.responses import ACTIVE

log = logging.getLogger("infergate.responses.background")
JOB_KIND = "response"
# the last event of a response (an `error` event is followed by response.failed)
TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
INTERRUPTED = (
    "The server running this background response stopped after its events had started to stream; "
    "it was not run again."
)


class _Hub:
    """Per-process wake-ups: stream readers wait here for events this process just committed
    (readers in other processes poll the database)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def subscribe(self, response_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(response_id, set()).add(event)
        return event

    def unsubscribe(self, response_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(response_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[response_id]

    def notify(self, response_id: str) -> None:
        for event in self._waiters.get(response_id, ()):
            event.set()


HUB = _Hub()


async def start_background(
    platform: Any,
    params: Any,
    body: dict[str, Any],
    *,
    key_uuid: str,
    response_id: str,
    history: list[dict[str, Any]],
) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
    """Store the queued response and submit its job. Returns the queued Response object, or with
    `stream: true` its events as they are stored (the same stream `?stream=true` resumes)."""
    from infergate.responses.objects import response_object
    from infergate.responses.translate import normalize_input

    jobs = getattr(platform, "jobs", None)
    if jobs is None:
        raise Unavailable("Background responses need the job queue, which is not running.")
    spec, _engine = platform.chat_engine(params.model)  # an unknown model is a 404 now, not a failed job
    check_output_limit(spec, "max_output_tokens", params.max_output_tokens)  # a 400 now, too
    response = response_object(params, spec, response_id, int(time.time()), "queued", [], None)
    await platform.responses.save(
        response,
        normalize_input(params),
        key_uuid=key_uuid,
        previous_response_id=params.previous_response_id,
        conversation_id=params.conversation_id,
        background=True,
    )
    payload = {"body": body, "history": history}
    try:
        await jobs.submit(JOB_KIND, payload, key_uuid=key_uuid, job_id=response_id, model_id=spec.id)
    except Exception as exc:
        await _fail(platform, response_id, response, f"The job could not be queued ({type(exc).__name__}).")
        raise
    if params.stream:
        return _events(platform, response_id, key_uuid, -1)
    return response


# --- the job -------------------------------------------------------------------------------------


async def run_job(job: Any, platform: Any) -> dict[str, Any]:
    """The `response` job handler: run the response, storing its events and its end."""
    from infergate.responses.runner import run_response
    from infergate.schemas.responses import ResponsesRequest

    store = platform.responses
    try:
        row = await store.row(job.id, None)
    except InfergateError:
        return {"status": "deleted"}  # deleted (or expired) before it ran: nothing to do
    if row["status"] not in ACTIVE:
        return {"status": row["status"]}  # cancelled before it ran
    response = row["body"]
    body = job.payload["body"]
    last = await store.last_event(job.id)
    if row["status"] == "in_progress" and last >= 0 and body.get("stream"):
        await _fail(platform, job.id, response, INTERRUPTED)
        return {"status": "failed"}
    if last >= 0:  # an earlier attempt streamed to nobody: start afresh
        await store.clear_events(job.id)
    response |= {"status": "in_progress"}
    if not await store.update_row(job.id, status="in_progress", body=response):
        return {"status": "cancelled"}  # cancelled a moment ago
    final: dict[str, Any] | None = None
    pending: asyncio.Future[Any] | None = None
    try:
        params = ResponsesRequest.model_validate(body)
        events = run_response(
            platform,
            params,
            body,
            key_uuid=row["key_uuid"],
            request_id=job.id,  # one ledger row per response, however often the job runs
            response_id=job.id,
            history=job.payload.get("history") or [],
            started=time.perf_counter(),
        )
        async for event in events:
            pending = store.append_events(job.id, [event])
            pending.add_done_callback(lambda f: _written(job.id, f))
            if event.get("type") in TERMINAL_EVENTS and isinstance(event.get("response"), dict):
                final = event["response"]
    except asyncio.CancelledError:
        raise  # cancelled (the row already says so) or handed back at shutdown
    except Exception as exc:
        log.exception("background response %s failed", job.id)
        message = (
            exc.message if isinstance(exc, InfergateError) else f"Internal error ({type(exc).__name__})."
        )
        await _fail(platform, job.id, response, message)
        return {"status": "failed"}
    if pending is not None:
        await pending
    if final is None:
        await _fail(platform, job.id, response, "The response ended without a final event.")
        return {"status": "failed"}
    final = {**final, "background": True}
    await store.finish(final, row["key_uuid"])
    HUB.notify(job.id)
    return {"status": final.get("status")}


def _written(response_id: str, future: asyncio.Future[Any]) -> None:
    """An event's write committed (or failed: the final write reports that): wake the readers."""
    if not future.cancelled() and future.exception() is not None:
        log.warning("an event of background response %s was not stored", response_id)
    HUB.notify(response_id)


async def _fail(platform: Any, response_id: str, response: dict[str, Any], reason: str) -> None:
    """Mark an active response failed with `reason`, and end its event stream with the failure."""
    store = platform.responses
    failed = response | {"status": "failed", "error": {"code": "server_error", "message": reason}}
    if await store.update_row(response_id, status="failed", body=failed):
        seq = await store.last_event(response_id) + 1
        with contextlib.suppress(Exception):  # the row says failed: the stream ends either way
            await store.append_events(
                response_id, [{"type": "response.failed", "sequence_number": seq, "response": failed}]
            )  # awaited: readers woken below must find it
        HUB.notify(response_id)


async def sweep(platform: Any, idle_ms: int = 10_000) -> int:
    """Fail active background responses whose job is missing or over; returns how many."""
    jobs = getattr(platform, "jobs", None)
    if jobs is None:
        return 0
    failed = 0
    for row in await platform.responses.active_background(idle_ms):
        job = await jobs.get(row["id"], admin=True)
        if job is not None and job.status in ("QUEUED", "IN_PROGRESS"):
            continue
        reason = (job.error if job is not None else None) or "The background job of this response was lost."
        await _fail(platform, row["id"], row["body"], reason)
        failed += 1
    return failed


async def sweep_forever(platform: Any, every: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            count = await sweep(platform)
            if count:
                log.warning("%d background responses without a live job marked failed", count)
        except Exception as exc:
            log.warning("background sweep failed: %s", type(exc).__name__)


# --- reading and cancelling ------------------------------------------------------------------------


async def open_stream(
    platform: Any, response_id: str, key_uuid: str, after: int
) -> AsyncIterator[dict[str, Any]]:
    """The events of a background response after sequence number `after`, live until it ends.
    Raises (404, 400) before the stream starts."""
    row = await platform.responses.row(response_id, key_uuid)
    if not row["background"]:
        raise InvalidRequest(
            "stream=true replays background responses only; this one was not created with background: true.",
            param="stream",
        )
    return _events(platform, response_id, key_uuid, after)


async def _events(
    platform: Any, response_id: str, key_uuid: str, after: int
) -> AsyncIterator[dict[str, Any]]:
    store = platform.responses
    wake = HUB.subscribe(response_id)
    interval = store.settings.stream_poll_seconds
    try:
        while True:
            wake.clear()
            for event in await store.events_after(response_id, after):
                after = event["sequence_number"]
                yield event
                if event.get("type") in TERMINAL_EVENTS:
                    return
            row = await store.row(response_id, key_uuid)
            if row["status"] not in ACTIVE:  # over without a final event (cancelled): the stream ends
                if not await store.events_after(response_id, after):
                    return
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
    finally:
        HUB.unsubscribe(response_id, wake)


async def cancel_background(platform: Any, response_id: str, key_uuid: str) -> dict[str, Any]:
    """Cancel a queued or running background response; a finished one is returned unchanged."""
    store = platform.responses
    row = await store.row(response_id, key_uuid)
    if not row["background"]:
        raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
    if row["status"] in ACTIVE:
        cancelled = row["body"] | {"status": "cancelled"}
        if await store.update_row(response_id, status="cancelled", body=cancelled):
            jobs = getattr(platform, "jobs", None)
            if jobs is not None:
                with contextlib.suppress(Conflict):  # the job just ended: the row is final anyway
                    await jobs.cancel(response_id, key_uuid)
            HUB.notify(response_id)
    return (await store.row(response_id, key_uuid))["body"]


def _register() -> None:
    with contextlib.suppress(ImportError):  # the job queue ships with the jobs package
        from infergate.jobs.worker import register_handler

        register_handler(JOB_KIND, run_job)


_register()
