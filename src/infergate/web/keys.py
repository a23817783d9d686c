"""Keys page: list, create (secret shown once), rename, regenerate and delete (typed name), limits.

Every change goes through the /v2 keys API in-process (loopback.py), so revocation fan-out,
metrics and the audit log happen exactly as for an API client.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from infergate.errors import NotFound
from infergate.web import loopback
from infergate.web.csrf import OnceTokens
from infergate.web.data import key_rows
from infergate.web.guard import Ctx, panel_action, panel_page
from infergate.web.playground import PLAYGROUND_KEY_NAME
from infergate.web.render import redirect

router = APIRouter()
once = OnceTokens()
RESENT = "This form was already sent (the page was reloaded), so nothing was done again."
KEYS_API = "/v2/gen-ai/models/api_keys"
LIMIT_FIELDS = ("rpm", "tpm", "max_concurrency", "monthly_budget_usd")
LIMIT_LABELS = {
    "rpm": "Requests per minute",
    "tpm": "Tokens per minute",
    "max_concurrency": "Concurrent requests",
    "monthly_budget_usd": "Monthly budget (USD)",
}


async def _render_keys(
    request: Request,
    ctx: Ctx,
    status: int = 200,
    secret: dict[str, Any] | None = None,
    error: str | None = None,
) -> Response:
    await ctx.platform.ledger.flush()  # this month's spend includes what was just answered
    rows = await asyncio.to_thread(key_rows, ctx.platform)
    return ctx.render(
        request,
        "keys.html",
        status,
        nav="keys",
        keys=rows,
        secret=secret,
        error=error,
        playground_name=PLAYGROUND_KEY_NAME,
        once_token=once.issue(),
    )


async def _key(request: Request, ctx: Ctx, uuid: str) -> dict[str, Any] | None:
    """The live key named in the path (only what the forms show: no spend, no secret)."""
    try:
        record = await asyncio.to_thread(ctx.platform.keys.get, uuid[:64])
    except NotFound:
        return None
    return {"uuid": record.uuid, "name": record.name}


async def keys_page(request: Request, ctx: Ctx) -> Response:
    return await _render_keys(request, ctx)


async def create_key(request: Request, ctx: Ctx) -> Response:
    if not once.use(ctx.form.get("once", "")):
        return await _render_keys(request, ctx, 409, error=RESENT)
    name = ctx.form.get("name", "").strip()
    answer = await loopback.call(request, "POST", KEYS_API, ctx.admin_token, {"name": name})
    if answer.status != 200:
        return await _render_keys(request, ctx, 400, error=answer.error_message())
    info = answer.json()["api_key_info"]
    return await _render_keys(request, ctx, secret={"action": "created", **info})


async def confirm_page(request: Request, ctx: Ctx) -> Response:
    uuid, action = request.path_params["uuid"], request.path_params["action"]
    if action not in ("rename", "regenerate", "delete", "limits"):
        return ctx.render(request, "error.html", 404, title="Not found", message="No such page.")
    key = await _key(request, ctx, uuid)
    if key is None:
        return ctx.render(
            request, "error.html", 404, title="Key not found", message="That key no longer exists."
        )
    if action == "limits":
        return await _limits_page(request, ctx, key)
    return ctx.render(request, f"key_{action}.html", nav="keys", key=key, error=None, once_token=once.issue())


async def key_action(request: Request, ctx: Ctx) -> Response:
    uuid, action = request.path_params["uuid"], request.path_params["action"]
    key = await _key(request, ctx, uuid)
    if key is None:
        return ctx.render(
            request, "error.html", 404, title="Key not found", message="That key no longer exists."
        )
    path = f"{KEYS_API}/{quote(uuid, safe='')}"
    if action == "rename":
        name = ctx.form.get("name", "").strip()
        answer = await loopback.call(request, "PUT", path, ctx.admin_token, {"name": name})
        if answer.status != 200:
            return ctx.render(
                request, "key_rename.html", 400, nav="keys", key=key, error=answer.error_message()
            )
        return redirect("/panel/keys?done=renamed")
    if action in ("regenerate", "delete"):
        if ctx.form.get("confirm_name", "") != key["name"]:
            error = "The name you typed does not match the key's name; nothing was changed."
            return ctx.render(
                request, f"key_{action}.html", 400, nav="keys", key=key, error=error, once_token=once.issue()
            )
        if action == "regenerate" and not once.use(ctx.form.get("once", "")):
            return await _render_keys(request, ctx, 409, error=RESENT)
        if action == "delete":
            answer = await loopback.call(request, "DELETE", path, ctx.admin_token)
            if answer.status != 200:
                return await _render_keys(request, ctx, answer.status, error=answer.error_message())
            return redirect("/panel/keys?done=deleted")
        answer = await loopback.call(request, "PUT", path + "/regenerate", ctx.admin_token)
        if answer.status != 200:
            return await _render_keys(request, ctx, answer.status, error=answer.error_message())
        return await _render_keys(
            request, ctx, secret={"action": "regenerated", **answer.json()["api_key_info"]}
        )
    if action == "limits":
        return await _save_limits(request, ctx, key)
    return ctx.render(request, "error.html", 404, title="Not found", message="No such action.")


async def _limits_page(
    request: Request, ctx: Ctx, key: dict[str, Any], status: int = 200, error: str | None = None
) -> Response:
    path = f"{KEYS_API}/{quote(key['uuid'], safe='')}/limits"
    answer = await loopback.call(request, "GET", path, ctx.admin_token)
    if answer.status != 200:
        missing = answer.status in (404, 405) and "limits" not in answer.error_message().lower()
        message = "Per-key limits are not available in this build." if missing else answer.error_message()
        return ctx.render(request, "error.html", answer.status, title="Limits", message=message)
    data = answer.json()
    values = {**data.get("limits", {}), **({k: ctx.form.get(k, "") for k in LIMIT_FIELDS} if error else {})}
    return ctx.render(
        request,
        "key_limits.html",
        status,
        nav="keys",
        key=key,
        limits=values,
        usage=data.get("usage", {}),
        error=error,
    )


def _number(name: str, text: str) -> int | float | None:
    text = text.strip()
    if not text:
        return None  # empty: no limit
    try:
        return float(text) if name == "monthly_budget_usd" else int(text)
    except ValueError:
        kind = "an amount in USD" if name == "monthly_budget_usd" else "a whole number"
        raise ValueError(f"{LIMIT_LABELS[name]}: enter {kind}, or leave it empty for no limit") from None


async def _save_limits(request: Request, ctx: Ctx, key: dict[str, Any]) -> Response:
    try:
        body = {name: _number(name, ctx.form.get(name, "")) for name in LIMIT_FIELDS}
    except ValueError as exc:
        return await _limits_page(request, ctx, key, 400, str(exc))
    path = f"{KEYS_API}/{quote(key['uuid'], safe='')}/limits"
    answer = await loopback.call(request, "PUT", path, ctx.admin_token, body)
    if answer.status != 200:
        return await _limits_page(request, ctx, key, 400, answer.error_message())
    return redirect("/panel/keys?done=limits")


router.add_api_route("/panel/keys", panel_page(keys_page), methods=["GET"])
router.add_api_route("/panel/keys", panel_action(create_key), methods=["POST"])
router.add_api_route("/panel/keys/{uuid}/{action}", panel_page(confirm_page), methods=["GET"])
router.add_api_route("/panel/keys/{uuid}/{action}", panel_action(key_action), methods=["POST"])
