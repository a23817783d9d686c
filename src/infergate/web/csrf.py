"""CSRF protection of the panel's state-changing requests, and the login rate limit.

Every POST carries the session's CSRF token (form field `csrf_token` or header `X-CSRF-Token`);
the session cookie is SameSite=Strict as well, and a request whose Origin is another site is
refused before anything else. The login form, which has no session yet, uses a double-submit
token: a random value in a SameSite=Strict cookie that the form must echo.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque

from starlette.requests import Request

FIELD = "csrf_token"
HEADER = "x-csrf-token"
LOGIN_COOKIE = "infergate_login_csrf"


def same_origin(request: Request) -> bool:
    """A browser sends Origin on every POST; a value naming another site is a cross-site request."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None  # "null" (sandboxed frames, some redirects) is never ours
    # behind a proxy that rewrites Host, the browser's host is the forwarded one
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")} - {""}
    return origin.split("://", 1)[-1] in hosts


def token_ok(expected: str | None, request: Request, form: dict[str, str]) -> bool:
    sent = form.get(FIELD) or request.headers.get(HEADER) or ""
    return bool(expected) and bool(sent) and hmac.compare_digest(sent.encode(), expected.encode())


class LoginLimiter:
    """Failed logins per client address in a sliding window (per process: enough to make guessing
    a long admin token hopeless; the window is short so an operator who mistyped is not locked out)."""

    def __init__(self, attempts: int, window: float) -> None:
        self.attempts = attempts
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def retry_after(self, client: str, now: float | None = None) -> int:
        """Seconds to wait before another attempt is looked at; 0 when one is allowed now."""
        now = time.monotonic() if now is None else now
        failures = self._recent(client, now)
        if len(failures) < self.attempts:
            return 0
        return max(1, int(failures[0] + self.window - now + 0.999))

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._recent(client, now).append(now)
        if len(self._failures) > 10_000:  # bounded memory: forget clients with no recent failure
            for name in [c for c, f in self._failures.items() if not f]:
                del self._failures[name]

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


class OnceTokens:
    """One-use form tokens for the actions that answer with a secret (create, regenerate): a page
    reloaded after one re-sends its form, and must not make a second key or rotate the secret the
    user is looking at. Remembered per process (a bounded set)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._used: OrderedDict[str, None] = OrderedDict()

    @staticmethod
    def issue() -> str:
        return secrets.token_urlsafe(16)

    def use(self, token: str) -> bool:
        """True the first time a token is seen (an empty token is never accepted)."""
        if not token or token in self._used:
            return False
        self._used[token] = None
        if len(self._used) > self.size:
            self._used.popitem(last=False)
        return True
