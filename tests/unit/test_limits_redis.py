"""The shared limiter's Lua scripts on a private, real redis-server, and KeyLimiter's fallback to
per-process limits while that Redis is stopped."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infergate.errors import RateLimited
from infergate.limits import KeyLimits
from infergate.limits.model import Need
from infergate.limits.redis_store import NeedsSpend, RedisLimiter
from infergate.limits.service import REDIS_UP, KeyLimiter
from infergate.usage import Usage
from tests.support.redis_server import RedisServer
from tests.unit.test_limits import Parts

MONTH = "2026-11"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_budget_holds_under_concurrent_admissions(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        limiter = RedisLimiter(redis_server.url)
        limits = KeyLimits(monthly_budget_usd=70e-9)  # 70 nano-USD
        with pytest.raises(NeedsSpend):  # the month's spend must come from the ledger first
            await limiter.try_admit("k", "r0", limits, Need(7, 0), MONTH)
        await limiter.seed_spend("k", MONTH, 0)
        results = await asyncio.gather(
            *(limiter.try_admit("k", f"r{n}", limits, Need(7, 0), MONTH) for n in range(50))
        )
        admitted = [r for _, r in results if r is not None]
        assert len(admitted) == 10
        assert {v.refused for v, r in results if r is None} == {"budget"}
        assert await limiter.reserved_nano("k") == 70
        for reservation in admitted[:3]:
            await limiter.settle(reservation, 5, None, MONTH, None)  # each cost 5 of its 7
        assert await limiter.reserved_nano("k") == 49
        verdict, again = await limiter.try_admit("k", "r99", limits, Need(6, 0), MONTH)
        assert again is not None and (verdict.spent_nano, verdict.reserved_nano) == (15, 55)
        assert (await limiter.try_admit("k", "r100", limits, Need(1, 0), MONTH))[1] is None  # 15 + 55 + 1
        await limiter.close()

    run(scenario())


def test_rates_and_token_refunds(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        limiter = RedisLimiter(redis_server.url)
        limits = KeyLimits(rpm=2, tpm=100)
        first, a = await limiter.try_admit("k", "a", limits, Need(0, 60), MONTH)
        assert a is not None and (first.requests_remaining, first.tokens_remaining) == (1, 40)
        assert first.requests_reset == pytest.approx(30, abs=0.1) and first.tokens_reset == pytest.approx(
            36, abs=0.1
        )
        refused, _ = await limiter.try_admit("k", "b", limits, Need(0, 60), MONTH)
        assert refused.refused == "tpm" and refused.retry_after == pytest.approx(12, abs=0.1)
        await limiter.settle(a, 0, 20, MONTH, 100)  # used 20 of 60: 40 come back
        second, b = await limiter.try_admit("k", "b", limits, Need(0, 60), MONTH)
        assert b is not None and second.requests_remaining == 0
        third, _ = await limiter.try_admit("k", "c", limits, Need(0, 1), MONTH)
        assert third.refused == "rpm" and third.retry_after == pytest.approx(30, abs=0.1)
        await limiter.close()

    run(scenario())


def test_calls_batched_with_an_unloaded_script_run_once(redis_server: RedisServer) -> None:
    """A fresh Redis knows no script: in a pipeline where only the settle script is missing, the
    admissions that ran must not run again (a second run would reserve twice)."""

    async def scenario() -> None:
        limiter = RedisLimiter(redis_server.url)
        limits = KeyLimits(rpm=10, monthly_budget_usd=100e-9)
        await limiter.seed_spend("k", MONTH, 0)
        _, first = await limiter.try_admit("k", "a", limits, Need(10, 0), MONTH)  # loads the admit script
        assert first is not None
        results = await asyncio.gather(
            limiter.settle(first, 10, None, MONTH, None),  # its script is not in Redis yet
            limiter.try_admit("k", "b", limits, Need(10, 0), MONTH),
            limiter.try_admit("k", "c", limits, Need(10, 0), MONTH),
        )
        assert [verdict.requests_remaining for verdict, _ in results[1:]] == [8, 7]
        assert await limiter.reserved_nano("k") == 20
        verdict, _ = await limiter.try_admit("k", "d", limits, Need(10, 0), MONTH)
        assert (verdict.spent_nano, verdict.reserved_nano, verdict.requests_remaining) == (10, 30, 6)
        await limiter.close()

    run(scenario())


def test_a_client_gone_during_admission_gets_its_reservation_given_back(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        limiter = RedisLimiter(redis_server.url)
        limits = KeyLimits(max_concurrency=1, monthly_budget_usd=10e-9)
        await limiter.seed_spend("k", MONTH, 0)
        admission = asyncio.create_task(limiter.try_admit("k", "gone", limits, Need(10, 0), MONTH))
        await asyncio.sleep(0)  # one turn of the loop: the call is queued, its pipeline not sent yet
        admission.cancel()  # the client left; Redis still runs the script and reserves
        with pytest.raises(asyncio.CancelledError):
            await admission
        deadline = time.monotonic() + 10
        while (await limiter.try_admit("k", "next", limits, Need(10, 0), MONTH))[1] is None:
            assert time.monotonic() < deadline, "the reservation of the gone client was never given back"
        assert await limiter.reserved_nano("k") == 10  # only "next" holds one
        await limiter.close()

    run(scenario())


def test_a_lease_not_renewed_frees_its_slot_and_reservation(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        # as if the process holding the request died: nobody renews or settles it
        limiter = RedisLimiter(redis_server.url, lease_ms=300)
        limits = KeyLimits(max_concurrency=1, monthly_budget_usd=10e-9)
        await limiter.seed_spend("k", MONTH, 0)
        assert (await limiter.try_admit("k", "held", limits, Need(10, 0), MONTH))[1] is not None
        verdict, refused = await limiter.try_admit("k", "next", limits, Need(10, 0), MONTH)
        assert refused is None and verdict.refused == "concurrency"
        await limiter.renew({"k": ["held"]})  # a renewal keeps it for another lease
        deadline = time.monotonic() + 10
        while (await limiter.try_admit("k", "next", limits, Need(10, 0), MONTH))[1] is None:
            assert time.monotonic() < deadline, "the lapsed lease never freed the slot"
            await asyncio.sleep(0.05)
        assert await limiter.reserved_nano("k") == 10  # only the new request's reservation
        await limiter.close()

    run(scenario())


def test_redis_down_falls_back_to_per_process_limits_and_recovers(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parts = Parts(tmp_path / "db")
    key, _ = parts.keys.create("k")
    parts.limiter = KeyLimiter(parts.db, redis_server.url, parts.cache)
    caplog.set_level(logging.INFO, logger="infergate.limits")

    async def scenario() -> None:
        limiter = parts.limiter
        await limiter.start()
        await limiter.set(key.uuid, KeyLimits(rpm=2))
        for n in range(2):
            (await admit(limiter, key.uuid, n)).settle(200, Usage())
        with pytest.raises(RateLimited):  # shared bucket in Redis: empty
            await admit(limiter, key.uuid, 2)
        assert REDIS_UP._value.get() == 1
        redis_server.stop()
        for n in range(3, 5):  # the process's own bucket, fresh: service goes on
            (await admit(limiter, key.uuid, n)).settle(200, Usage())
        with pytest.raises(RateLimited):  # ...and its limit still holds
            await admit(limiter, key.uuid, 5)
        assert REDIS_UP._value.get() == 0 and not limiter.redis_up
        warnings = [r for r in caplog.records if "Redis unreachable for key limits" in r.getMessage()]
        assert len(warnings) == 1  # once per state change, not per request
        redis_server.start()
        deadline = time.monotonic() + 15
        while not limiter.redis_up:
            assert time.monotonic() < deadline, "the limiter never went back to Redis"
            await asyncio.sleep(0.05)
        assert REDIS_UP._value.get() == 1
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        # the restarted Redis is empty: a fresh shared bucket of 2
        (await admit(limiter, key.uuid, 6)).settle(200, Usage())
        (await admit(limiter, key.uuid, 7)).settle(200, Usage())
        with pytest.raises(RateLimited):
            await admit(limiter, key.uuid, 8)
        await limiter.close()

    async def admit(limiter: KeyLimiter, key_uuid: str, n: int) -> Any:
        meter = parts.meter(key_uuid, n)
        await limiter.admit(meter, 10)
        return meter

    run(scenario())
