"""Panel sessions: a signed, expiring cookie (HMAC-SHA256 from the standard library).

The cookie holds no secret: only its expiry, a random id and the CSRF token of the session. It is
signed with a key derived from INFERGATE_ADMIN_TOKEN, so every replica with the same token accepts
it without shared state, and changing the token logs every session out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from infergate.config import int_env

COOKIE = "infergate_session"
DEFAULT_TTL = 8 * 3600


@dataclass(frozen=True)
class PanelSettings:
    session_ttl: int = DEFAULT_TTL  # seconds a login lasts
    login_attempts: int = 5  # failed logins per client address per window
    login_window: int = 60  # seconds

    @classmethod
    def from_env(cls) -> PanelSettings:
        return cls(
            session_ttl=int_env("INFERGATE_PANEL_SESSION_TTL", DEFAULT_TTL, minimum=1),
            login_attempts=int_env("INFERGATE_PANEL_LOGIN_ATTEMPTS", 5, minimum=1),
        )


@dataclass(frozen=True)
class Session:
    sid: str
    csrf: str
    expires: int  # epoch seconds


def _key(admin_token: str) -> bytes:
    return hmac.new(admin_token.encode(), b"infergate panel session v1", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_session(ttl: int, now: float | None = None) -> Session:
    now = time.time() if now is None else now
    return Session(secrets.token_urlsafe(16), secrets.token_urlsafe(32), int(now) + ttl)


def sign(session: Session, admin_token: str) -> str:
    payload = _b64(json.dumps({"sid": session.sid, "csrf": session.csrf, "exp": session.expires}).encode())
    mac = _b64(hmac.new(_key(admin_token), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{mac}"


def verify(cookie: str | None, admin_token: str | None, now: float | None = None) -> Session | None:
    """The session in a cookie, or None when it is missing, forged, malformed or expired."""
    if not cookie or not admin_token or len(cookie) > 1024:
        return None
    payload, _, mac = cookie.partition(".")
    expected = _b64(hmac.new(_key(admin_token), payload.encode(), hashlib.sha256).digest())
    if not mac or not hmac.compare_digest(mac, expected):
        return None
    try:
        data = json.loads(_unb64(payload))
        session = Session(str(data["sid"]), str(data["csrf"]), int(data["exp"]))
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires <= (time.time() if now is None else now):
        return None
    return session


def cookie_header(value: str, max_age: int, secure: bool) -> str:
    """HttpOnly (no script reads it), SameSite=Strict (no other site sends it), Path=/."""
    parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
