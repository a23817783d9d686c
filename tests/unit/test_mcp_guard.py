"""The SSRF guard of mcp tools: allow-list prefixes, address rules, and the connect-time pin."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpcore2
import pytest

from infergate.config import SettingError
from infergate.errors import InvalidRequest
from infergate.responses.mcp_client import PinnedBackend
from infergate.responses.mcp_guard import (
    AddressPolicy,
    AllowedPrefix,
    check_addresses,
    check_url,
    parse_allow_list,
)


def allowed(*prefixes: str) -> tuple[AllowedPrefix, ...]:
    return parse_allow_list(",".join(prefixes))


def test_allow_list_parsing_and_bad_entries() -> None:
    prefixes = parse_allow_list(" https://mcp.example.com/tools , ,http://127.0.0.1:9000 ")
    assert [(p.scheme, p.host, p.port, p.path) for p in prefixes] == [
        ("https", "mcp.example.com", 443, "/tools"),
        ("http", "127.0.0.1", 9000, "/"),
    ]
    assert parse_allow_list("") == ()
    for bad in ("mcp.example.com", "ftp://x.example/", "https://user:pw@x.example/", "https://"):
        with pytest.raises(SettingError, match="INFERGATE_MCP_ALLOWED_URLS"):
            parse_allow_list(bad)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://mcp.example.com/tools", True),
        ("https://mcp.example.com/tools/", True),
        ("https://mcp.example.com/tools/sse", True),
        ("https://MCP.example.com./tools/x", True),
        ("https://mcp.example.com:443/tools", True),
        ("https://mcp.example.com/toolsevil", False),  # a prefix ends at a path boundary
        ("https://mcp.example.com/", False),
        ("http://mcp.example.com/tools", False),  # scheme must match
        ("https://mcp.example.com:8443/tools", False),  # port must match
        ("https://mcp.example.com.evil.net/tools", False),
        ("https://evil.net/https://mcp.example.com/tools", False),
    ],
)
def test_prefix_matching(url: str, ok: bool) -> None:
    prefixes = allowed("https://mcp.example.com/tools")
    if ok:
        parts, policy = check_url(url, prefixes, "tools[0].server_url")
        assert parts.hostname and policy == AddressPolicy()
    else:
        with pytest.raises(InvalidRequest) as err:
            check_url(url, prefixes, "tools[0].server_url")
        assert err.value.param == "tools[0].server_url"
        assert "INFERGATE_MCP_ALLOWED_URLS" in err.value.message


def test_empty_allow_list_says_how_to_enable() -> None:
    with pytest.raises(InvalidRequest) as err:
        check_url("https://mcp.example.com/", (), "tools[2].server_url")
    assert err.value.param == "tools[2].server_url"
    assert "disabled" in err.value.message and "INFERGATE_MCP_ALLOWED_URLS" in err.value.message


@pytest.mark.parametrize(
    "url", [None, 5, "", "not a url", "file:///etc/passwd", "http://h:99999/", "https://u:p@mcp.example.com/"]
)
def test_bad_urls_are_400(url: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        check_url(url, allowed("https://mcp.example.com/"), "tools[0].server_url")
    assert err.value.param == "tools[0].server_url"


def test_literal_entries_name_their_address() -> None:
    _, policy = check_url("http://127.0.0.1:9000/mcp", allowed("http://127.0.0.1:9000/"), "p")
    assert policy.permits(ipaddress.ip_address("127.0.0.1"))
    assert not policy.permits(ipaddress.ip_address("127.0.0.2"))
    _, policy = check_url("http://[::1]:9000/mcp", allowed("http://[0:0::1]:9000"), "p")
    assert policy.permits(ipaddress.ip_address("::1"))
    _, policy = check_url("http://localhost:9000/mcp", allowed("http://localhost:9000/"), "p")
    assert policy.loopback and policy.permits(ipaddress.ip_address("127.0.0.1"))
    assert not policy.permits(ipaddress.ip_address("10.0.0.1"))


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fc00::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_public_only_policy(address: str, ok: bool) -> None:
    assert AddressPolicy().permits(ipaddress.ip_address(address)) is ok


def _private_hostname() -> str:
    """This machine's host name: /etc/hosts maps it to a loopback or private address on Linux."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    if any(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
        pytest.skip(f"host name {name!r} resolves to a public address here: {addresses}")
    return name


def test_hostname_resolving_to_private_address_is_refused() -> None:
    name = _private_hostname()
    parts, policy = check_url(
        f"http://{name}:9000/mcp", allowed(f"http://{name}:9000/"), "tools[0].server_url"
    )
    with pytest.raises(InvalidRequest) as err:
        asyncio.run(check_addresses(parts, policy, "tools[0].server_url"))
    assert err.value.param == "tools[0].server_url"
    assert "private" in err.value.message and "literally" in err.value.message


def test_unresolvable_host_is_400() -> None:
    parts, policy = check_url("http://no-such-host.invalid/", allowed("http://no-such-host.invalid/"), "p")
    with pytest.raises(InvalidRequest, match="cannot be resolved"):
        asyncio.run(check_addresses(parts, policy, "p"))


def test_pinned_backend_refuses_at_connect_time() -> None:
    """Even when a name passed the first check, the address dialled is checked again."""

    async def dial(host: str, policy: AddressPolicy) -> None:
        stream = await PinnedBackend(policy).connect_tcp(host, port, timeout=5)
        await stream.aclose()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for host in ("127.0.0.1", _private_hostname()):
            with pytest.raises(httpcore2.ConnectError, match="not allowed"):
                asyncio.run(dial(host, AddressPolicy()))
        asyncio.run(dial("127.0.0.1", AddressPolicy(explicit=frozenset([ipaddress.ip_address("127.0.0.1")]))))


def test_pinned_client_uses_the_backend() -> None:
    """The HTTP client the MCP transports get refuses what the policy refuses, proxies or not."""
    import httpx2

    from infergate.responses.mcp_client import pinned_client

    async def get(policy: AddressPolicy) -> int:
        async with pinned_client(policy) as client:
            return (await client.get(f"http://127.0.0.1:{port}/")).status_code

    from tests.support.mcp_server import McpTestServer

    server = McpTestServer().start()
    try:
        port = server.http_port
        with pytest.raises(httpx2.ConnectError, match="not allowed"):
            asyncio.run(get(AddressPolicy()))
        assert asyncio.run(get(AddressPolicy(loopback=True))) == 404
    finally:
        server.stop()
