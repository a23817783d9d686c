"""Templates and the security headers every panel answer carries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from infergate import __version__

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# Strict: scripts and styles only from files of this server (no inline code, no eval), nothing
# framed, forms post only here. Images and audio may be data:/blob: URLs made by the playground.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages may show a secret once, and always show account data
}


# Messages after a redirect, by code: a link cannot make the panel show words of its choosing.
FLASH = {
    "renamed": "Key renamed.",
    "deleted": "Key deleted: its secret no longer works.",
    "limits": "Limits saved; they apply from the next request.",
}


def _when(value: Any) -> str:
    """A datetime or epoch milliseconds as 'YYYY-MM-DD HH:MM UTC'; '—' for none."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _usd(value: Any) -> str:
    """Cents for sums of a cent or more, micro-dollars below (a small model's requests cost little)."""
    amount = float(value or 0)
    if amount == 0:
        return "$0.00"
    return f"${amount:,.6f}" if abs(amount) < 0.01 else f"${amount:,.4f}"


def _price(value: Any) -> str:
    return "free" if not value else f"${float(value):g}"


env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(when=_when, usd=_usd, price=_price)
env.globals["version"] = __version__


def secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    context.setdefault("session", None)
    context.setdefault("nav", "")
    context.setdefault("flash", FLASH.get(request.query_params.get("done", "")))
    html = env.get_template(template).render(request=request, **context)
    return secure(HTMLResponse(html, status_code=status))


def redirect(url: str) -> Response:
    return secure(RedirectResponse(url, status_code=303))
