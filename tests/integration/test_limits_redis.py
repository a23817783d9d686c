"""Per-key limits shared through Redis by two real servers (one database): the budget race, the
rate limit across replicas, and Redis killed mid-test (per-process limits, a metric, recovery)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_limits import (
    BUDGET_USD,
    assert_budget_race,
    chat,
    fire,
    get_limits,
    ledger_rows,
    limits_catalog,
    put_limits,
)
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream


class Pair:
    def __init__(self, folder: Path, catalog: str) -> None:
        self.redis = RedisServer(folder / "redis").start()
        self.db = folder / "shared.db"
        env = {"INFERGATE_DATABASE_URL": f"sqlite:///{self.db}", "INFERGATE_REDIS_URL": self.redis.url}
        self.a = ServerProcess(folder / "a", catalog, env=env).start()
        self.b = ServerProcess(folder / "b", catalog, env=env).start()

    @property
    def urls(self) -> list[str]:
        return [self.a.url, self.b.url]

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()
        self.redis.stop()


@pytest.fixture
def pair(upstream: StandInUpstream, tmp_path: Path) -> Iterator[Pair]:
    servers = Pair(tmp_path, limits_catalog(upstream.base_url))
    yield servers
    servers.stop()


def metric(server: ServerProcess, name: str) -> float | None:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else None


def wait_for(check, what: str, seconds: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_fifty_concurrent_requests_on_two_servers_on_a_budget_for_ten(pair: Pair) -> None:
    key = pair.a.create_key("race")
    assert put_limits(pair.a, key["uuid"], {"monthly_budget_usd": BUDGET_USD}).status_code == 200
    responses = asyncio.run(fire(pair.urls, key["secret_key"], 50))
    assert_budget_race(responses, ledger_rows(pair.db, key["uuid"], [pair.a, pair.b]))
    # both servers decided: each alone would have allowed ten
    assert len({r.request.url.port for r in responses if r.status_code == 429}) == 2
    for server in (pair.a, pair.b):  # one shared state: both see the same spend, nothing reserved
        usage = get_limits(server, key["uuid"]).json()["usage"]
        assert usage == {"month_cost_usd": pytest.approx(BUDGET_USD), "reserved_usd": 0.0}


def test_rpm_holds_across_two_servers(pair: Pair) -> None:
    key = pair.a.create_key("rpm")
    assert put_limits(pair.b, key["uuid"], {"rpm": 3}).status_code == 200
    started = time.monotonic()
    statuses = []
    for n in range(10):  # alternating: each server alone would allow 3
        r = chat(pair.urls[n % 2], key["secret_key"])
        statuses.append(r.status_code)
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        if r.status_code == 429:
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert 1 <= int(r.headers["retry-after"]) <= 20
    refill = int((time.monotonic() - started) * 3 / 60)  # the bucket refills one request per 20 s
    assert 3 <= statuses.count(200) <= 3 + refill, statuses
    assert statuses[:3] == [200, 200, 200] and set(statuses) == {200, 429}


def test_redis_killed_mid_test_degrades_to_per_process_limits(pair: Pair) -> None:
    key = pair.a.create_key("outage")
    assert put_limits(pair.a, key["uuid"], {"rpm": 3}).status_code == 200
    assert [chat(pair.urls[n % 2], key["secret_key"]).status_code for n in range(4)] == [200, 200, 200, 429]
    assert metric(pair.a, "infergate_limits_redis_up") == 1.0
    pair.redis.stop()
    # service goes on; each server now enforces the limit alone, from a fresh bucket of 3
    for server in (pair.a, pair.b):
        statuses = [chat(server.url, key["secret_key"]).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429], statuses
        assert metric(server, "infergate_limits_redis_up") == 0.0
        assert (metric(server, "infergate_limits_local_fallback_total") or 0) >= 4
        assert server.log().count("Redis unreachable for key limits") == 1
    pair.redis.start()  # same port, empty
    for server in (pair.a, pair.b):
        wait_for(lambda s=server: metric(s, "infergate_limits_redis_up") == 1.0, "the limiter back on Redis")
        assert "key limits are shared across replicas again" in server.log()
    # shared again: one bucket of 3 for both
    statuses = [chat(pair.urls[n % 2], key["secret_key"]).status_code for n in range(4)]
    assert statuses == [200, 200, 200, 429], statuses
