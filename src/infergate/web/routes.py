"""The control panel at / (issue 11): login, logout, static files, and the pages' routers.

Pages live under /panel/ (the unprefixed inference routes own /models and friends); GET / is the
way in: the login form, or the keys page once logged in.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from infergate.web import csrf, session
from infergate.web.guard import Ctx, current_session, forbidden, panel_action, read_form
from infergate.web.history import router as history_router
from infergate.web.keys import router as keys_router
from infergate.web.models import router as models_router
from infergate.web.render import STATIC, page, redirect, secure
from infergate.web.usage import router as usage_router

router = APIRouter(include_in_schema=False)
router.include_router(keys_router)
router.include_router(models_router)
router.include_router(usage_router)
router.include_router(history_router)

STATIC_FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()}
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
settings = session.PanelSettings.from_env()
limiter = csrf.LoginLimiter(settings.login_attempts, settings.login_window)


def _safe_next(value: str | None) -> str:
    """Only a path of this site (never //host or a scheme): no open redirect after login."""
    if not value or not value.startswith("/panel/") or value.startswith("//") or urlsplit(value).netloc:
        return "/panel/keys"
    return value


def _login_page(request: Request, status: int = 200, error: str | None = None, **extra: object) -> Response:
    token = secrets.token_urlsafe(24)
    response = page(
        request,
        "login.html",
        status,
        login_csrf=token,
        error=error,
        next=_safe_next(request.query_params.get("next")),
        configured=bool(request.app.state.platform.settings.admin_token),
        **extra,
    )
    secure_flag = request.url.scheme == "https"
    response.headers.append(
        "set-cookie",
        f"{csrf.LOGIN_COOKIE}={token}; Path=/panel/login; HttpOnly; SameSite=Strict; Max-Age=3600"
        + ("; Secure" if secure_flag else ""),
    )
    return response


@router.get("/")
async def home(request: Request) -> Response:
    if current_session(request) is not None:
        return redirect("/panel/keys")
    return _login_page(request)


@router.get("/panel")
@router.get("/panel/")
async def panel_root() -> Response:
    return redirect("/")


@router.post("/panel/login")
async def login(request: Request) -> Response:
    platform = request.app.state.platform
    admin_token = platform.settings.admin_token
    if not admin_token:
        return _login_page(request, 403)
    form = await read_form(request)
    cookie = request.cookies.get(csrf.LOGIN_COOKIE, "")
    sent = form.get(csrf.FIELD, "")
    if not csrf.same_origin(request) or not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        return forbidden(request, "The login form's security token is missing or wrong; reload the page.")
    client = request.client.host if request.client else "unknown"
    wait = limiter.retry_after(client)
    if wait:
        response = _login_page(request, 429, f"Too many failed attempts. Try again in {wait} seconds.")
        response.headers["Retry-After"] = str(wait)
        return response
    token = form.get("token", "")
    if not hmac.compare_digest(token.encode(), admin_token.encode()):
        limiter.failed(client)
        return _login_page(request, 401, "That is not the admin token.")
    limiter.succeeded(client)
    sess = session.new_session(settings.session_ttl)
    response = redirect(_safe_next(form.get("next")))
    secure_flag = request.url.scheme == "https"
    response.headers.append(
        "set-cookie",
        session.cookie_header(session.sign(sess, admin_token), settings.session_ttl, secure_flag),
    )
    response.headers.append("set-cookie", f"{csrf.LOGIN_COOKIE}=; Path=/panel/login; Max-Age=0")
    return response


async def _logout(request: Request, ctx: Ctx) -> Response:
    response = redirect("/")
    response.headers.append("set-cookie", session.cookie_header("", 0, request.url.scheme == "https"))
    return response


router.add_api_route("/panel/logout", panel_action(_logout), methods=["POST"])


@router.get("/favicon.ico")
async def favicon() -> Response:
    """Browsers ask for /favicon.ico on their own (pages link the SVG; this saves a 404)."""
    response = FileResponse(STATIC_FILES["favicon.svg"], media_type="image/svg+xml")
    response.headers["Cache-Control"] = "public, max-age=86400"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@router.get("/panel/static/{name}")
async def static(name: str) -> Response:
    path = STATIC_FILES.get(name)
    if path is None:
        return secure(Response("not found", status_code=404, media_type="text/plain"))
    response = FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"))
    response.headers["Cache-Control"] = "public, max-age=3600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
