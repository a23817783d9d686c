"""Server-side request forgery guard for `mcp` tools.

A client names the MCP server, and infergate connects to it, so a `server_url` could aim at the
operator's own network. Three checks stand in the way:
1. the URL must fall under a prefix of the operator's allow-list (`INFERGATE_MCP_ALLOWED_URLS`);
2. every address its host resolves to must be public, unless the matching allow-list entry names
   that address literally (`http://10.0.0.5:8080/`) or is `localhost` (loopback only);
3. the same rule is applied again at connect time, to the address actually dialled, by the HTTP
   client's network backend (`PinnedBackend` in mcp_client.py), so a DNS answer that changes after
   the check cannot slip through.
The MCP transports follow redirects only within the server's origin, so no redirect leaves it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from infergate.config import SettingError
from infergate.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}
ALLOW_VAR = "INFERGATE_MCP_ALLOWED_URLS"


def _host(parts: SplitResult) -> str:
    return (parts.hostname or "").rstrip(".").lower()


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _port(parts: SplitResult) -> int:
    return parts.port or DEFAULT_PORTS[parts.scheme]  # .port raises ValueError when malformed


@dataclass(frozen=True)
class AllowedPrefix:
    """One allow-list entry: scheme, host and port must be equal, the path must start at a '/' boundary."""

    raw: str
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, raw: str) -> AllowedPrefix:
        parts = urlsplit(raw)
        if parts.scheme not in DEFAULT_PORTS or not _host(parts) or parts.username or parts.password:
            raise ValueError(raw)
        return cls(raw, parts.scheme, _host(parts), _port(parts), parts.path or "/")

    def matches(self, parts: SplitResult) -> bool:
        host = _host(parts)
        same_host = host == self.host or (
            _literal_ip(host) is not None and _literal_ip(host) == _literal_ip(self.host)
        )
        if parts.scheme != self.scheme or not same_host or _port(parts) != self.port:
            return False
        path = parts.path or "/"
        base = self.path.rstrip("/")
        return path == self.path or path == base or path.startswith(base + "/")

    def address_policy(self) -> AddressPolicy:
        """Private addresses this entry names explicitly: its literal IP, or loopback for `localhost`."""
        ip = _literal_ip(self.host)
        return AddressPolicy(
            explicit=frozenset([ip]) if ip else frozenset(), loopback=self.host == "localhost"
        )


def parse_allow_list(value: str) -> tuple[AllowedPrefix, ...]:
    """INFERGATE_MCP_ALLOWED_URLS: comma-separated http(s) URL prefixes; a bad one stops the start."""
    prefixes = []
    for raw in (v.strip() for v in value.split(",")):
        if not raw:
            continue
        try:
            prefixes.append(AllowedPrefix.parse(raw))
        except ValueError:
            raise SettingError(
                f"{ALLOW_VAR} entries must be http:// or https:// URL prefixes with a host "
                f"(no user:password@), got {raw!r}"
            ) from None
    return tuple(prefixes)


@dataclass(frozen=True)
class AddressPolicy:
    """Which resolved addresses a connection may use: public ones, plus what the operator listed."""

    explicit: frozenset[IPAddress] = frozenset()
    loopback: bool = False

    def permits(self, ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if ip in self.explicit or (self.loopback and ip.is_loopback):
            return True
        return ip.is_global and not ip.is_multicast


def check_url(url: Any, allowed: Iterable[AllowedPrefix], param: str) -> tuple[SplitResult, AddressPolicy]:
    """The allow-list check (1): the parsed URL and the address policy of the entry that admits it."""
    allowed = tuple(allowed)
    if not allowed:
        raise InvalidRequest(
            "mcp tools are disabled on this server: the operator must list the allowed MCP server URL "
            f"prefixes in {ALLOW_VAR} (comma-separated, e.g. https://mcp.example.com/)",
            param=param,
        )
    if not isinstance(url, str) or not url:
        raise InvalidRequest("server_url is required for mcp tools (a string URL)", param=param)
    try:
        parts = urlsplit(url)
        ok = parts.scheme in DEFAULT_PORTS and bool(_host(parts)) and _port(parts) > 0
    except ValueError:
        ok = False
    if not ok:
        raise InvalidRequest(f"server_url must be an http:// or https:// URL, got {url[:200]!r}", param=param)
    if parts.username or parts.password:
        raise InvalidRequest("server_url must not carry credentials; use `headers`", param=param)
    for prefix in allowed:
        if prefix.matches(parts):
            return parts, prefix.address_policy()
    raise InvalidRequest(
        f"server_url {url[:200]!r} is not allowed on this server: it must start with one of the "
        f"prefixes in {ALLOW_VAR}",
        param=param,
    )


async def resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])  # drop an IPv6 zone id
        if ip not in seen:
            seen.append(ip)
    return seen


async def check_addresses(parts: SplitResult, policy: AddressPolicy, param: str) -> None:
    """The address check (2): a host that resolves to any address the policy refuses is refused."""
    host = _host(parts)
    try:
        addresses = await resolve(host, _port(parts))
    except OSError:
        raise InvalidRequest(f"server_url host {host!r} cannot be resolved", param=param) from None
    refused = [ip for ip in addresses if not policy.permits(ip)]
    if refused or not addresses:
        raise InvalidRequest(
            f"server_url host {host!r} resolves to a loopback, private or reserved address "
            f"({refused[0] if refused else 'none'}); such servers are refused unless {ALLOW_VAR} "
            "lists that address literally (e.g. http://10.0.0.5:8080/) or, for loopback, localhost",
            param=param,
        )
