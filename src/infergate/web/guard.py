"""Wrappers that make a panel route: a valid session for every page, CSRF for every action."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import Response

from infergate.platform import Platform
from infergate.web import csrf, session
from infergate.web.render import page, redirect, secure


@dataclass
class Ctx:
    """What a panel handler gets: the platform, the session, the posted form (actions only)."""

    platform: Platform
    session: session.Session
    admin_token: str
    form: dict[str, str]

    def render(self, request: Request, template: str, status: int = 200, **context: object) -> Response:
        return page(request, template, status, session=self.session, **context)


Handler = Callable[[Request, Ctx], Awaitable[Response]]


def current_session(request: Request) -> session.Session | None:
    token = request.app.state.platform.settings.admin_token
    return session.verify(request.cookies.get(session.COOKIE), token)


async def read_form(request: Request) -> dict[str, str]:
    """application/x-www-form-urlencoded, parsed here (no multipart dependency for small forms)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))


def _login_redirect(request: Request) -> Response:
    if request.headers.get("hx-request"):  # an htmx refresh: send the whole page to the login form
        return secure(Response(status_code=200, headers={"HX-Redirect": "/"}))
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect("/?next=" + quote(target, safe=""))


def forbidden(request: Request, why: str) -> Response:
    return page(request, "error.html", 403, title="Request refused", message=why)


def panel_page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """GET pages: no valid session (none, forged, expired) leads to the login page."""

    async def endpoint(request: Request) -> Response:
        platform: Platform = request.app.state.platform
        sess = current_session(request)
        if sess is None or not platform.settings.admin_token:
            return _login_redirect(request)
        return secure(await handler(request, Ctx(platform, sess, platform.settings.admin_token, {})))

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def panel_action(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """POSTs: a session, a same-origin request and the session's CSRF token, or 403."""

    async def endpoint(request: Request) -> Response:
        platform: Platform = request.app.state.platform
        if not csrf.same_origin(request):
            return forbidden(request, "This form was sent from another site, so it was refused.")
        sess = current_session(request)
        if sess is None or not platform.settings.admin_token:
            if request.headers.get(csrf.HEADER) is not None:  # a script's call: no redirect to follow
                return forbidden(request, "Your session has ended; log in again.")
            return _login_redirect(request)
        form = await read_form(request)
        if not csrf.token_ok(sess.csrf, request, form):
            return forbidden(request, "The form's security token is missing or wrong; reload the page.")
        return secure(await handler(request, Ctx(platform, sess, platform.settings.admin_token, form)))

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint
