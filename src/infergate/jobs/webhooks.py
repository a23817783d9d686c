"""Webhooks: a finished job's object POSTed to its `webhook_url`, signed, retried, logged.

Secure by default: no URL is allowed until the operator lists URL prefixes in
`INFERGATE_WEBHOOK_ALLOWED_URLS` (comma-separated; scheme, host and port must match, the path
must start at a '/' boundary), and then `INFERGATE_WEBHOOK_SECRET` must be set too. A host must
resolve to public addresses only, unless the entry names the address literally
(`http://10.0.0.5:8080/hooks`) or is `localhost`; the check is repeated at connect time by the
resolver that dials (a DNS answer that changes after the submit check cannot slip through).
Redirects are not followed.

Signature (the Standard Webhooks scheme, so its libraries verify it):
`webhook-id` (the same on every retry), `webhook-timestamp` (Unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
secret's bytes (a `whsec_` secret is base64-decoded first, as those libraries do).

Delivery is a job of kind `webhook`, queued in the same transaction that finished the job (an
outbox), so a notification survives any crash. A non-2xx answer or a network error is retried
with exponential backoff (INFERGATE_WEBHOOK_BACKOFF_MS, doubling, at most 10 minutes) up to
INFERGATE_WEBHOOK_MAX_ATTEMPTS deliveries; every attempt is logged (job_deliveries).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from infergate import __version__
from infergate.config import SettingError, float_env, int_env
from infergate.errors import InvalidRequest
from infergate.jobs.queue import WEBHOOK_KIND, Job, RetryLater
from infergate.jobs.worker import register_handler
from infergate.schemas.async_invoke import job_object

ALLOW_VAR = "INFERGATE_WEBHOOK_ALLOWED_URLS"
SECRET_VAR = "INFERGATE_WEBHOOK_SECRET"
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_BACKOFF = 600.0
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class Prefix:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, raw: str) -> Prefix:
        parts = urlsplit(raw)
        host = (parts.hostname or "").rstrip(".").lower()
        if parts.scheme not in DEFAULT_PORTS or not host or parts.username or parts.password:
            raise ValueError(raw)
        return cls(parts.scheme, host, parts.port or DEFAULT_PORTS[parts.scheme], parts.path or "/")

    def matches(self, parts: SplitResult) -> bool:
        host = (parts.hostname or "").rstrip(".").lower()
        same_host = host == self.host or (_ip(host) is not None and _ip(host) == _ip(self.host))
        if (
            parts.scheme != self.scheme
            or not same_host
            or (parts.port or DEFAULT_PORTS[parts.scheme]) != self.port
        ):
            return False
        path, base = parts.path or "/", self.path.rstrip("/")
        return path == self.path or path == base or path.startswith(base + "/")

    def permits(self, ip: IPAddress) -> bool:
        """Public addresses, plus the entry's literal IP, plus loopback for `localhost`."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip == _ip(self.host) or (self.host == "localhost" and ip.is_loopback):
            return True
        return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class WebhookSettings:
    allowed: tuple[Prefix, ...] = ()
    secret: str | None = None
    timeout: float = 10.0
    backoff: float = 1.0  # seconds before the first retry; doubles each time

    @classmethod
    def from_env(cls) -> WebhookSettings:
        allowed = []
        for raw in (v.strip() for v in os.environ.get(ALLOW_VAR, "").split(",")):
            if not raw:
                continue
            try:
                allowed.append(Prefix.parse(raw))
            except ValueError:
                raise SettingError(
                    f"{ALLOW_VAR} entries must be http:// or https:// URL prefixes with a host, got {raw!r}"
                ) from None
        secret = os.environ.get(SECRET_VAR) or None
        if allowed and not secret:
            raise SettingError(f"{SECRET_VAR} must be set when {ALLOW_VAR} is (webhooks are signed with it)")
        return cls(
            allowed=tuple(allowed),
            secret=secret,
            timeout=float_env("INFERGATE_WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
            backoff=int_env("INFERGATE_WEBHOOK_BACKOFF_MS", 1000, minimum=1) / 1000,
        )


@cache
def settings() -> WebhookSettings:
    return WebhookSettings.from_env()


def allowed_prefix(url: Any, config: WebhookSettings) -> Prefix:
    """The allow-list entry admitting `url`, or a 400 naming `webhook_url`."""
    if not config.allowed:
        raise InvalidRequest(
            "webhooks are disabled on this server: the operator must list the allowed URL prefixes "
            f"in {ALLOW_VAR}",
            param="webhook_url",
        )
    try:
        parts = urlsplit(url)
        ok = parts.scheme in DEFAULT_PORTS and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:
        ok = False
    if not isinstance(url, str) or not ok:
        raise InvalidRequest("webhook_url must be an http:// or https:// URL", param="webhook_url")
    if parts.username or parts.password:
        raise InvalidRequest("webhook_url must not carry credentials", param="webhook_url")
    for prefix in config.allowed:
        if prefix.matches(parts):
            return prefix
    raise InvalidRequest(
        f"webhook_url {url[:200]!r} is not allowed on this server: it must start with one of the "
        f"prefixes in {ALLOW_VAR}",
        param="webhook_url",
    )


async def resolve(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))


async def check_webhook_url(url: Any, config: WebhookSettings | None = None) -> None:
    """Submit-time check: allowed prefix, and a host resolving only to addresses it permits."""
    prefix = allowed_prefix(url, config or settings())
    parts = urlsplit(url)
    try:
        addresses = await resolve(parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme])
    except OSError:
        raise InvalidRequest(
            f"webhook_url host {parts.hostname!r} cannot be resolved", param="webhook_url"
        ) from None
    if not addresses or not all(prefix.permits(ip) for ip in addresses):
        raise InvalidRequest(
            f"webhook_url host {parts.hostname!r} resolves to a loopback, private or reserved address; "
            f"list that address literally in {ALLOW_VAR} (or localhost) to allow it",
            param="webhook_url",
        )


class PinnedResolver(AbstractResolver):
    """Resolves like the default resolver but refuses addresses the allow-list entry does not permit."""

    def __init__(self, prefix: Prefix) -> None:
        self.prefix = prefix

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        addresses = await resolve(host, port)
        if not addresses or not all(self.prefix.permits(ip) for ip in addresses):
            raise OSError(f"{host} resolves to an address that is not allowed")
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in addresses
        ]

    async def close(self) -> None:
        pass


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()


def sign(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


async def post(url: str, body: bytes, msg_id: str, config: WebhookSettings) -> int:
    """One delivery attempt: the answer's status code (raises on network errors and refusals)."""
    prefix = allowed_prefix(url, config)
    timestamp = str(int(time.time()))
    headers = {
        "content-type": "application/json",
        "user-agent": f"infergate/{__version__}",
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sign(config.secret or "", msg_id, timestamp, body),
    }
    connector = aiohttp.TCPConnector(resolver=PinnedResolver(prefix), force_close=True)
    timeout = aiohttp.ClientTimeout(total=config.timeout)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session,
        session.post(url, data=body, headers=headers, allow_redirects=False) as response,
    ):
        await response.read()
        return response.status


async def deliver(job: Job, platform: Any) -> Any:
    """The `webhook` job kind: deliver the finished job's object once more."""
    target = await asyncio.to_thread(platform.jobs.get_now, job.payload["job_id"], None, True)
    if target is None or not target.webhook_url:
        return {"skipped": "the job no longer exists"}
    config = settings()
    body = orjson.dumps(job_object(target))
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    refused = False
    try:
        status = await post(target.webhook_url, body, job.id, config)
    except InvalidRequest as exc:  # the allow-list changed since the submit
        error, refused = exc.message, True
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
    elapsed_ms = (time.perf_counter() - started) * 1000
    ok = status is not None and 200 <= status < 300
    final = ok or refused or job.attempts >= job.max_attempts
    outcome = ("delivered" if ok else "failed") if final else None
    await asyncio.to_thread(
        platform.jobs.record_delivery, target.id, job.attempts, status, error, elapsed_ms, outcome
    )
    if ok:
        return {"delivered": status, "attempts": job.attempts}
    reason = f"webhook delivery {job.attempts} failed: {error or f'HTTP {status}'}"
    if refused:
        raise InvalidRequest(reason)
    raise RetryLater(reason, min(config.backoff * 2 ** (job.attempts - 1), MAX_BACKOFF))


register_handler(WEBHOOK_KIND, deliver)
