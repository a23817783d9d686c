"""Pass-through to an upstream that serves /v1/responses itself (`responses_native = true`).

The upstream gets the whole conversation as `input` (history from our store included, with
`store: false`: the state lives here), answers in its own words, and we re-number its events,
put our response id and model id on them, bill its usage once and store the result.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from infergate.catalog import ModelSpec
from infergate.engines.openai_upstream import OpenAIUpstreamEngine, _sse_events
from infergate.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from infergate.metering import Charge
from infergate.responses.events import Event, Sequencer
from infergate.responses.objects import output_text, response_object, usage_object
from infergate.schemas.responses import ResponsesRequest
from infergate.tokens import count_tokens
from infergate.usage import Usage

LOCAL_FIELDS = ("previous_response_id", "conversation", "background", "store", "stream_options")
FINAL = ("response.completed", "response.incomplete", "response.failed")


def _strip(item: dict[str, Any]) -> dict[str, Any]:
    """Items as input for the upstream: our ids mean nothing there."""
    return (
        {k: v for k, v in item.items() if k not in ("id", "status")}
        if item.get("type") == "message"
        else item
    )


def _usage(raw: Any) -> Usage:
    """The upstream's Responses usage (estimated=True: none usable, count it instead)."""
    if not isinstance(raw, dict):
        return Usage(estimated=True)
    usage = Usage.from_openai(raw) or Usage(estimated=True)
    details = raw.get("output_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        usage.reasoning_tokens = details["reasoning_tokens"]
    return usage


async def run_native(
    platform: Any,
    spec: ModelSpec,
    engine: Any,
    params: ResponsesRequest,
    body: dict[str, Any],
    *,
    key_uuid: str | None,
    request_id: str,
    response_id: str,
    history: list[dict[str, Any]],
    input_items: list[dict[str, Any]],
    started: float,
) -> AsyncIterator[Event]:
    from infergate.responses.runner import ENDPOINT, store_response

    if not isinstance(engine, OpenAIUpstreamEngine):
        raise InvalidRequest(f"model '{spec.id}' is not an upstream model", param="model")
    payload = {k: v for k, v in body.items() if k not in LOCAL_FIELDS}
    payload.update(model=spec.upstream_name, input=[_strip(i) for i in history + input_items], store=False)
    meter = await platform.admit(
        Charge(spec, request_id, key_uuid, ENDPOINT, started),
        max_output_tokens=params.max_output_tokens,
        prompt_texts=lambda: [orjson.dumps(payload["input"]).decode()],
    )
    created_at = int(time.time())
    seq = Sequencer()
    output: list[dict[str, Any]] = []

    def ours(status: str, usage: Usage | None, raw: dict[str, Any] | None = None) -> dict[str, Any]:
        obj = response_object(
            params, spec, response_id, created_at, status, output, usage_object(usage) if usage else None
        )
        if raw:
            obj["error"] = raw.get("error")
            obj["incomplete_details"] = raw.get("incomplete_details")
        return obj

    url = spec.base_url.rstrip("/") + "/responses"  # type: ignore[union-attr]
    try:
        response = await engine.session.post(url, data=orjson.dumps(payload), headers=engine.headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        meter.fail(exc)
        raise UpstreamError(f"upstream {spec.id} is unreachable: {exc}") from None
    try:
        if response.status >= 400:
            exc = engine._upstream_failure(
                response.status, await response.text(errors="replace"), response.headers
            )
            meter.fail(exc)
            raise exc
        final: dict[str, Any] | None = None
        if not params.stream:
            raw = orjson.loads(await response.read())
            output.extend(raw.get("output") or [])
            final = raw
        else:
            async for event in _sse_events(response, spec.id):
                kind = str(event.get("type") or "")
                if kind in FINAL:
                    final = event.get("response") or {}
                    output[:] = final.get("output") or output
                    break
                event = {**event, "sequence_number": seq.next}
                seq.next += 1
                if kind.startswith("response.") and isinstance(event.get("response"), dict):
                    event["response"] = ours(str(event["response"].get("status") or "in_progress"), None)
                elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
                    output.append(event["item"])
                meter.output.append(str(event.get("delta") or ""))
                yield event
        if final is None:
            raise UpstreamError(f"upstream {spec.id} ended its stream without a final response")
    except (TimeoutError, aiohttp.ClientError) as exc:
        err = UpstreamTimeout if isinstance(exc, TimeoutError) else UpstreamError
        failure = err(f"upstream {spec.id} broke off: {exc}")
        meter.fail(failure)
        raise failure from None
    except BaseException as exc:
        meter.fail(exc)
        raise
    finally:
        response.release()
    usage = _usage(final.get("usage"))
    if usage.estimated:  # the upstream reported nothing usable: count it here
        usage = await meter.estimate()
        usage.output_tokens = count_tokens(output_text(output)) or usage.output_tokens
    meter.settle(200, usage)
    status = str(final.get("status") or "completed")
    obj = ours(status, usage, final)
    obj["output_text"] = output_text(output)
    await store_response(platform, params, obj, input_items, key_uuid)
    yield seq.event(
        f"response.{status}" if f"response.{status}" in FINAL else "response.completed", response=obj
    )
