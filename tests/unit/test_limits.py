"""Per-key limits without a server: the values, the in-process limiter, and KeyLimiter on a real SQLite
database with real meters (reservation size, settlement, the month's spend read from the ledger)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from infergate.auth import KeyCache, RevocationEpoch
from infergate.catalog import ModelSpec
from infergate.errors import InvalidRequest, RateLimited
from infergate.limits import KeyLimiter, KeyLimits
from infergate.limits.local import LocalLimiter
from infergate.limits.model import HTTP_STATE, Need, duration, month_of, month_start_ms, seconds_to_next_month
from infergate.metering import Charge, Meter
from infergate.storage.db import open_database
from infergate.storage.keys import KeyRepository
from infergate.storage.ledger import LedgerRepository
from infergate.usage import Usage, now_ms

MONTH = "2026-11"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


# -- values --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"rpm": 0}, "rpm"),
        ({"rpm": -5}, "rpm"),
        ({"rpm": 1.5}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"tpm": "100"}, "tpm"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"monthly_budget_usd": -0.01}, "monthly_budget_usd"),
        ({"monthly_budget_usd": float("nan")}, "monthly_budget_usd"),
        ({"monthly_budget_usd": float("inf")}, "monthly_budget_usd"),
        ({"monthly_budget_usd": "5"}, "monthly_budget_usd"),
        ({"rpm": 10, "budget": 5}, "budget"),
    ],
)
def test_bad_limits_are_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        KeyLimits.from_dict(fields)
    assert caught.value.param == param
    assert caught.value.message.startswith(param)


def test_limits_values() -> None:
    assert KeyLimits.from_dict({}).unlimited
    limits = KeyLimits.from_dict({"rpm": 5, "monthly_budget_usd": 0.07})
    assert limits.budget_nano == 70_000_000
    assert limits.to_dict() == {"rpm": 5, "tpm": None, "max_concurrency": None, "monthly_budget_usd": 0.07}
    assert KeyLimits(monthly_budget_usd=3).monthly_budget_usd == 3.0
    assert KeyLimits.from_nano(None, None, None, 70_000_000).monthly_budget_usd == 0.07
    assert not KeyLimits(rpm=5).counts_prompt and KeyLimits(tpm=5).counts_prompt


def test_durations_in_openai_format() -> None:
    assert [duration(s) for s in (0, 0.12, 1, 8.64, 59.999, 360, 3723)] == [
        "0s", "120ms", "1s", "8.64s", "60s", "6m0s", "1h2m3s",
    ]  # fmt: skip


def test_months_are_utc_calendar_months() -> None:
    t = 1_764_547_199.5  # 2025-11-30 23:59:59.5 UTC
    assert month_of(t) == "2025-11" and month_of(t + 1) == "2025-12"
    assert month_start_ms("2025-12") == 1_764_547_200_000
    assert seconds_to_next_month(t) == pytest.approx(0.5)


# -- the in-process limiter ----------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rpm_is_a_token_bucket_that_refills_over_a_minute() -> None:
    clock = Clock()
    local = LocalLimiter(clock)
    limits = KeyLimits(rpm=2)
    first, _ = local.try_admit("k", limits, Need(0, 0), MONTH, 0)
    second, _ = local.try_admit("k", limits, Need(0, 0), MONTH, 0)
    third, reservation = local.try_admit("k", limits, Need(0, 0), MONTH, 0)
    assert (first.refused, first.requests_remaining) == (None, 1)
    assert (second.refused, second.requests_remaining, second.requests_reset) == (None, 0, 60.0)
    assert third.refused == "rpm" and reservation is None
    assert third.retry_after == pytest.approx(30.0)
    clock.now += 30
    again, _ = local.try_admit("k", limits, Need(0, 0), MONTH, 0)
    assert again.refused is None


def test_budget_counts_spend_and_open_reservations() -> None:
    local = LocalLimiter(Clock())
    limits = KeyLimits(monthly_budget_usd=100e-9)  # 100 nano-USD
    local.seed_spend("k", MONTH, 0)
    _, a = local.try_admit("k", limits, Need(40, 0), MONTH, 0)
    _, b = local.try_admit("k", limits, Need(40, 0), MONTH, 0)
    refused, none = local.try_admit("k", limits, Need(40, 0), MONTH, 0)
    assert a and b and none is None
    assert (refused.refused, refused.spent_nano, refused.reserved_nano) == ("budget", 0, 80)
    local.settle(a, 10, 0, MONTH)  # cost less than reserved: the difference is free again
    admitted, c = local.try_admit("k", limits, Need(40, 0), MONTH, 0)
    assert c is not None and (admitted.spent_nano, admitted.reserved_nano) == (10, 80)
    refused_again, _ = local.try_admit("k", limits, Need(11, 0), MONTH, 0)
    assert refused_again.refused == "budget"  # 10 + 80 + 11 > 100


def test_concurrency_slot_is_freed_on_settle() -> None:
    local = LocalLimiter(Clock())
    limits = KeyLimits(max_concurrency=1)
    _, a = local.try_admit("k", limits, Need(0, 0), MONTH, 0)
    refused, _ = local.try_admit("k", limits, Need(0, 0), MONTH, 0)
    assert a is not None and refused.refused == "concurrency"
    local.settle(a, 0, 0, MONTH)
    assert local.try_admit("k", limits, Need(0, 0), MONTH, 0)[1] is not None


def test_unused_tokens_are_given_back() -> None:
    local = LocalLimiter(Clock())
    limits = KeyLimits(tpm=100)
    first, a = local.try_admit("k", limits, Need(0, 60), MONTH, 0)
    refused, _ = local.try_admit("k", limits, Need(0, 60), MONTH, 0)
    assert a is not None and first.tokens_remaining == 40
    assert refused.refused == "tpm" and refused.retry_after == pytest.approx(20 * 60 / 100)
    local.settle(a, 0, 20, MONTH)  # used 20 of the 60 reserved
    assert local.try_admit("k", limits, Need(0, 60), MONTH, 0)[1] is not None
    # an estimate-billed request (tokens unknown) keeps its reservation
    _, b = local.try_admit("k", KeyLimits(tpm=100), Need(0, 20), MONTH, 0)
    assert b is not None
    local.settle(b, 0, None, MONTH)
    assert local.try_admit("k", limits, Need(0, 1), MONTH, 0)[0].tokens_remaining == 0


# -- KeyLimiter on a real database ---------------------------------------------------------------
SPEC = ModelSpec(
    id="priced",
    backend="openai",
    base_url="http://127.0.0.1:9/v1",
    input_price=1000.0,  # USD per 1M tokens: 1,000,000 nano-USD per token
    output_price=2000.0,
    n_ctx=1000,
)


class Parts:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.db = open_database(f"sqlite:///{folder / 'limits.db'}")
        self.keys = KeyRepository(self.db)
        self.cache = KeyCache(self.keys, RevocationEpoch(folder), ttl=5)
        self.limiter = KeyLimiter(self.db, None, self.cache)
        self.ledger = LedgerRepository(self.db)
        self.rows: list[Any] = []

    def meter(self, key_uuid: str, n: int, texts: list[str] | None = None) -> Meter:
        charge = Charge(SPEC, f"req_{n}", key_uuid, "chat.completions", time.perf_counter())
        return Meter(self, charge, prompt_texts=(lambda: texts) if texts else None)

    def record(self, entry: Any) -> None:  # the ledger writer's part: rows straight into the ledger
        self.rows.append(entry)
        self.ledger.insert([entry.row()])


def test_reservation_is_prompt_plus_max_tokens_at_the_dearest_prices(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    key, _ = parts.keys.create("k")

    async def scenario() -> None:
        await parts.limiter.start()
        # without max_tokens a request may cost 1,000 context tokens x 0.002 USD = 2 USD, plus its prompt:
        # a budget of 2.5 USD holds one such request, not two
        await parts.limiter.set(key.uuid, KeyLimits(monthly_budget_usd=2.5))
        texts = ["hello there, how are you?"]
        first = parts.meter(key.uuid, 1, texts)
        await parts.limiter.admit(first, None)
        status = await parts.limiter.get(key.uuid)
        prompt = len(texts[0].encode())  # a short prompt is reserved as one token per byte (an upper bound)
        # prompt tokens at the 1h cache-write price (2x input), output at the model's context
        assert status.reserved_nano == prompt * 2_000_000 + 1000 * 2_000_000
        with pytest.raises(RateLimited) as caught:
            await parts.limiter.admit(parts.meter(key.uuid, 2, texts), None)
        assert caught.value.code == "insufficient_quota"
        assert caught.value.headers["Retry-After"] == "1"  # a reservation in flight may free room
        first.settle(200, Usage(input_tokens=5, output_tokens=100))  # 5 * 1e6 + 100 * 2e6 nano
        status = await parts.limiter.get(key.uuid)
        assert (status.month_cost_nano, status.reserved_nano) == (205_000_000, 0)
        second = parts.meter(key.uuid, 3, texts)
        await parts.limiter.admit(second, None)  # room again: 0.205 spent + about 2 reserved
        second.settle(200, Usage(input_tokens=5, output_tokens=10))
        await parts.limiter.close()

    run(scenario())


def test_month_spend_is_read_from_the_ledger_and_the_budget_holds(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    key, _ = parts.keys.create("k")
    other, _ = parts.keys.create("other")
    month_start = month_start_ms(month_of(time.time()))
    row = {
        "model": "priced", "endpoint": "chat.completions", "input_tokens": 0, "output_tokens": 0,
        "cache_read_tokens": 0, "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0,
        "status": 200, "latency_ms": 1.0, "estimated": False,
    }  # fmt: skip
    parts.ledger.insert(
        [
            {
                **row,
                "request_id": "old",
                "key_uuid": key.uuid,
                "cost_nano_usd": 10**9,
                "created_ms": month_start - 1,
            },
            {
                **row,
                "request_id": "now",
                "key_uuid": key.uuid,
                "cost_nano_usd": 60_000_000,
                "created_ms": now_ms(),
            },
            {
                **row,
                "request_id": "oth",
                "key_uuid": other.uuid,
                "cost_nano_usd": 10**9,
                "created_ms": now_ms(),
            },
        ]
    )

    async def scenario() -> None:
        await parts.limiter.start()
        await parts.limiter.set(key.uuid, KeyLimits(monthly_budget_usd=0.1))
        # 0.06 spent this month: a request that may cost 0.02 fits twice (0.06 + 0.04 = 0.1), not thrice
        meters = [parts.meter(key.uuid, n) for n in range(3)]
        await parts.limiter.admit(meters[0], 10)
        await parts.limiter.admit(meters[1], 10)
        with pytest.raises(RateLimited):
            await parts.limiter.admit(meters[2], 10)
        assert (await parts.limiter.get(other.uuid)).limits.unlimited
        await parts.limiter.admit(parts.meter(other.uuid, 9), 10)  # no limits: no reservation at all
        for m in meters[:2]:
            m.settle(200, Usage(output_tokens=10))
        status = await parts.limiter.get(key.uuid)
        assert status.month_cost_nano == 100_000_000 and status.reserved_nano == 0
        await parts.limiter.close()

    run(scenario())


def test_refusal_headers_reach_the_http_state(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    key, _ = parts.keys.create("k")

    async def scenario() -> dict[str, Any]:
        await parts.limiter.start()
        await parts.limiter.set(key.uuid, KeyLimits(rpm=1, tpm=10_000))
        state: dict[str, Any] = {}
        HTTP_STATE.set(state)
        await parts.limiter.admit(parts.meter(key.uuid, 1, ["hi"]), 5)
        admitted = dict(state["ratelimit_headers"])
        with pytest.raises(RateLimited) as caught:
            await parts.limiter.admit(parts.meter(key.uuid, 2, ["hi"]), 5)
        assert caught.value.status == 429 and caught.value.code == "rate_limit_exceeded"
        assert 1 <= int(caught.value.headers["Retry-After"]) <= 60
        await parts.limiter.close()
        return {"admitted": admitted, "refused": dict(state["ratelimit_headers"])}

    headers = run(scenario())
    assert headers["admitted"][b"x-ratelimit-limit-requests"] == b"1"
    assert headers["admitted"][b"x-ratelimit-remaining-requests"] == b"0"
    assert headers["admitted"][b"x-ratelimit-reset-requests"] in (b"60s", b"59.99s", b"1m0s")
    assert headers["admitted"][b"x-ratelimit-limit-tokens"] == b"10000"
    remaining = int(headers["admitted"][b"x-ratelimit-remaining-tokens"])
    assert 10_000 - 5 - 20 <= remaining < 10_000 - 5
    assert headers["refused"][b"x-ratelimit-remaining-requests"] == b"0"
    assert headers["refused"][b"x-ratelimit-reset-tokens"].endswith(b"s")


def test_a_too_large_request_names_max_tokens(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    key, _ = parts.keys.create("k")

    async def scenario() -> None:
        await parts.limiter.start()
        await parts.limiter.set(key.uuid, KeyLimits(tpm=500))
        with pytest.raises(RateLimited) as caught:
            await parts.limiter.admit(parts.meter(key.uuid, 1, ["hi"]), None)  # the 1,000-token context
        assert caught.value.param == "max_tokens" and "lower max_tokens" in caught.value.message
        await parts.limiter.close()

    run(scenario())


def test_limits_repository_on_postgres() -> None:
    """The upsert and the month's spend on PostgreSQL (127.0.0.1:5432, a database of its own)."""
    import uuid

    import psycopg

    from infergate.limits.store import LimitsRepository

    admin = None
    for dsn in ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://127.0.0.1:5432/test"):
        try:
            admin = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
            break
        except psycopg.OperationalError:
            continue
    if admin is None:
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (database 'test')")
    name = f"infergate_limits_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        engine = open_database(f"postgresql+psycopg://{admin.info.user}@127.0.0.1:5432/{name}")
        key, _ = KeyRepository(engine).create("k")
        repo = LimitsRepository(engine)
        repo.set(key.uuid, KeyLimits(rpm=5, monthly_budget_usd=1.25))
        repo.set(key.uuid, KeyLimits(tpm=9, monthly_budget_usd=0.07))  # replaces the whole set
        assert repo.get(key.uuid) == KeyLimits(tpm=9, monthly_budget_usd=0.07)
        assert repo.all() == {key.uuid: KeyLimits(tpm=9, monthly_budget_usd=0.07)}
        LedgerRepository(engine).insert(
            [
                {
                    "request_id": "r1", "key_uuid": key.uuid, "model": "m", "endpoint": "e",
                    "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
                    "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0, "cost_nano_usd": 5 * 10**12,
                    "status": 200, "latency_ms": 1.0, "estimated": False, "created_ms": now_ms(),
                }
            ]
        )  # fmt: skip
        assert repo.month_cost_nano(key.uuid, month_start_ms(month_of(time.time()))) == 5 * 10**12
        repo.set(key.uuid, KeyLimits())  # no limits: no row
        assert repo.all() == {} and repo.get(key.uuid).unlimited
        engine.dispose()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
