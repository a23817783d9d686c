"""KeyLimiter: per-key limits at admission (`Platform.admit`) and their settlement (`Meter.settle`).

The hot path of a key without limits is one dict lookup. A limited key's request reserves its
largest possible cost (prompt tokens, counted only for a budget or a token rate, plus max_tokens or
the model's context, at the model's highest input and its output price) and checks rpm, tpm,
concurrency and the monthly budget in one atomic step: a Lua script in Redis when
INFERGATE_REDIS_URL is set (one state for every replica), else the process's own state. Settling
frees the slot and turns the reservation into the real cost, so concurrent requests can never
spend past the budget. The month's spend is read from the ledger once per key and month, then kept
current by each settle.

If Redis stops answering, each process enforces the limits alone (warning logged once,
infergate_limits_redis_up = 0), and a probe brings the shared limits back when Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from sqlalchemy import Engine

from infergate.errors import NotFound
from infergate.limits.local import LocalLimiter, LocalReservation
from infergate.limits.model import (
    HEADERS_STATE,
    HTTP_STATE,
    KeyLimits,
    LimitsStatus,
    Need,
    Verdict,
    month_of,
    month_start_ms,
    rate_headers,
    refusal,
)
from infergate.limits.prices import Prices, prompt_bound
from infergate.limits.redis_store import LEASE_MS, NeedsSpend, RedisLimiter, RedisReservation
from infergate.limits.store import LimitsRepository
from infergate.observability import REGISTRY

if TYPE_CHECKING:
    from infergate.auth import KeyCache
    from infergate.catalog import ModelSpec
    from infergate.metering import Meter
    from infergate.usage import Usage

log = logging.getLogger("infergate.limits")
REDIS_UP = Gauge(
    "infergate_limits_redis_up",
    "1 while key limits are shared through Redis; 0 while each process enforces them alone",
    registry=REGISTRY,
)
LOCAL_FALLBACK = Counter(
    "infergate_limits_local_fallback_total",
    "Admissions of limited keys decided by this process alone because Redis was unreachable",
    registry=REGISTRY,
)
REFUSED = Counter(
    "infergate_limits_refused_total", "Requests refused by a key limit", ["limit"], registry=REGISTRY
)
PROBE_SECONDS = 1.0  # how often an unreachable Redis is asked again
RENEW_SECONDS = LEASE_MS / 4000
MAX_LEASE_AGE = 2 * 3600.0  # a reservation never settled (a bug) stops holding its slot after this
INLINE_PROMPT_CHARS = 16_384  # longer prompts are counted in a worker thread


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, asyncio.TimeoutError)


class KeyLimiter:
    """`await limiter.get(uuid)` / `await limiter.set(uuid, KeyLimits(...))` for the API, CLI and panel;
    `admit(meter, max_output_tokens)` for `Platform.admit`."""

    def __init__(self, db: Engine, redis_url: str | None, key_cache: KeyCache, ttl: float = 5.0) -> None:
        self.repo = LimitsRepository(db)
        self.key_cache = key_cache
        self.local = LocalLimiter()
        self.redis = RedisLimiter(redis_url) if redis_url else None
        self.redis_up = self.redis is not None
        self._ttl = max(ttl, 1.0)
        self._table: dict[str, KeyLimits] = {}
        self._seen_generation: int | None = None
        self._expires = 0.0
        self._load_seq = self._applied_seq = 0
        self._loading: tuple[int | None, asyncio.Task[None]] | None = None
        self._seeding: dict[tuple[str, str], asyncio.Task[int]] = {}
        self._prices: dict[str, Prices] = {}
        self._on_redis: dict[str, tuple[RedisReservation, float]] = {}  # request id -> (reservation, since)
        self._owed: dict[tuple[str, str], int] = {}  # (key, month) -> cost settled while Redis was away
        self._unsure: list[RedisReservation] = []  # admissions whose answer from Redis was lost
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._reload()
        if self.redis is not None:
            REDIS_UP.set(1)
            self._renewer = asyncio.create_task(self._renew_forever())
            try:  # say at once when Redis is not there (the service starts anyway)
                await self.redis.ping()
            except _redis_errors() as exc:
                self._went_down(exc)

    async def close(self) -> None:
        if self._tasks:  # settlements on their way to Redis
            await asyncio.wait(set(self._tasks), timeout=2)
        for task in (self._renewer, self._prober):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.close()

    # -- the limits table (every limited key, in memory) -----------------------------------------
    def _generation(self) -> int:
        # The key cache's generation moves on every key change announced anywhere (epoch file,
        # Redis); a limits change is announced the same way, so the table is re-read after it.
        return getattr(self.key_cache, "_generation", 0)

    async def limits_of(self, key_uuid: str) -> KeyLimits | None:
        if self._generation() != self._seen_generation:
            await self._reload()  # a change was announced: it applies from this request on
        elif time.monotonic() >= self._expires:
            self._reload_soon()  # backstop for a lost announcement; the table serves meanwhile
        return self._table.get(key_uuid)

    def _reload_soon(self) -> None:
        if self._loading is None or self._loading[1].done():
            self._expires = time.monotonic() + self._ttl
            self._loading = (self._generation(), asyncio.create_task(self._load()))

    async def _reload(self) -> None:
        generation = self._generation()
        if self._loading is None or self._loading[1].done() or self._loading[0] != generation:
            self._loading = (generation, asyncio.create_task(self._load()))
        await asyncio.shield(self._loading[1])

    async def _load(self) -> None:
        generation = self._generation()
        self._load_seq += 1
        seq = self._load_seq
        try:
            table = await asyncio.to_thread(self.repo.all)
        except Exception as exc:  # keep enforcing what we know; ask again after the TTL
            log.warning(
                "key limits not re-read from the database (%s); retried in %.0f s", _why(exc), self._ttl
            )
            table = None
        if seq > self._applied_seq:  # a slower, older read never overwrites a newer one
            self._applied_seq = seq
            if table is not None:
                self._table = table
            self._seen_generation = generation
            self._expires = time.monotonic() + self._ttl

    # -- admission -------------------------------------------------------------------------------
    async def admit(self, meter: Meter, max_output_tokens: int | None, extra_cost_nano: int = 0) -> None:
        """Reserve and check; raise RateLimited (429) when a limit refuses. Sets the x-ratelimit-*
        headers of the HTTP answer, when there is one."""
        charge = meter.charge
        if charge.key_uuid is None:
            return
        limits = await self.limits_of(charge.key_uuid)
        if limits is None:
            return
        need = await self._need(meter, limits, max_output_tokens, extra_cost_nano)
        month = month_of(time.time())
        verdict, reservation = await self._decide(charge.key_uuid, charge.request_id, limits, need, month)
        state = HTTP_STATE.get()
        if state is not None:
            state[HEADERS_STATE] = rate_headers(limits, verdict)
        if reservation is None:
            REFUSED.labels(verdict.refused).inc()
            raise refusal(limits, need, verdict)
        spec = charge.spec
        meter.on_settle = lambda usage: self._settled(reservation, spec, limits, usage)

    def prices(self, spec: ModelSpec) -> Prices:
        prices = self._prices.get(spec.id)
        if prices is None or prices.spec is not spec:
            prices = self._prices[spec.id] = Prices(spec)
        return prices

    async def _need(
        self, meter: Meter, limits: KeyLimits, max_output_tokens: int | None, extra_cost_nano: int = 0
    ) -> Need:
        if not limits.counts_prompt:
            return Need(0, 0)
        texts, framing = meter.prompt()
        prompt = prompt_bound(texts)
        if prompt is None:  # a long prompt: counted (in a thread), an estimate of its tokens
            prompt = (await meter.estimate()).input_tokens
        else:
            prompt += framing
        spec = meter.charge.spec
        output = max_output_tokens if max_output_tokens is not None else spec.n_ctx
        cost = (
            self.prices(spec).reserve(prompt, output) + extra_cost_nano
            if limits.budget_nano is not None
            else 0
        )
        return Need(cost, prompt + output)

    async def _decide(
        self, key_uuid: str, request_id: str, limits: KeyLimits, need: Need, month: str
    ) -> tuple[Verdict, LocalReservation | RedisReservation | None]:
        if self.redis is not None and self.redis_up:
            try:
                return await self._decide_redis(key_uuid, request_id, limits, need, month)
            except _redis_errors() as exc:
                # A timeout leaves it unknown whether Redis reserved: give it back once Redis answers.
                self._unsure.append(RedisReservation(key_uuid, request_id, need))
                self._went_down(exc)
        if self.redis is not None:
            LOCAL_FALLBACK.inc()
        if limits.budget_nano is not None and self.local.needs_spend(key_uuid, month):
            self.local.seed_spend(key_uuid, month, await self._ledger_spend(key_uuid, month))
        # no await from here on: the check and the reservation are one step
        return self.local.try_admit(key_uuid, limits, need, month, time.time())

    async def _decide_redis(
        self, key_uuid: str, request_id: str, limits: KeyLimits, need: Need, month: str
    ) -> tuple[Verdict, RedisReservation | None]:
        assert self.redis is not None
        for _ in range(3):
            try:
                verdict, reservation = await self.redis.try_admit(key_uuid, request_id, limits, need, month)
            except NeedsSpend:  # first use of the key this month (or Redis lost its data)
                await self.redis.seed_spend(key_uuid, month, await self._ledger_spend(key_uuid, month))
                continue
            if reservation is not None:
                self._on_redis[request_id] = (reservation, time.monotonic())
            return verdict, reservation
        raise RuntimeError("the month's spend could not be kept in Redis")

    async def _ledger_spend(self, key_uuid: str, month: str) -> int:
        """The key's cost this month as the ledger has it; one read per key at a time."""
        task = self._seeding.get((key_uuid, month))
        if task is None:
            task = asyncio.create_task(
                asyncio.to_thread(self.repo.month_cost_nano, key_uuid, month_start_ms(month))
            )
            self._seeding[(key_uuid, month)] = task
            task.add_done_callback(lambda _t: self._seeding.pop((key_uuid, month), None))
        return await asyncio.shield(task)

    # -- settlement (Meter.settle calls this once) -------------------------------------------------
    def _settled(
        self,
        reservation: LocalReservation | RedisReservation,
        spec: ModelSpec,
        limits: KeyLimits,
        usage: Usage | None,
    ) -> None:
        try:
            if usage is None:  # billed later by an estimate: the reservation stands as the cost
                cost, tokens = reservation.need.cost_nano, None
            else:
                cost, tokens = self.prices(spec).cost(usage), usage.total_tokens
            month = month_of(time.time())
            if isinstance(reservation, LocalReservation):
                self.local.settle(reservation, cost, tokens, month)
                if self.redis is not None and cost:
                    self._owe(reservation.key_uuid, month, cost)
            else:
                self._on_redis.pop(reservation.request_id, None)
                self._spawn(self._settle_redis(reservation, cost, tokens, month, limits.tpm))
        except Exception:  # a limiter bug must never break billing
            log.exception("settling the reservation of %s failed", getattr(reservation, "key_uuid", "?"))

    async def _settle_redis(
        self, reservation: RedisReservation, cost: int, tokens: int | None, month: str, tpm: int | None
    ) -> None:
        assert self.redis is not None
        try:
            await self.redis.settle(reservation, cost, tokens, month, tpm)
        except _redis_errors() as exc:
            self._went_down(exc)  # its lease lapses in Redis; its cost is added when Redis is back
            if cost:
                self._owe(reservation.key_uuid, month, cost)

    def _owe(self, key_uuid: str, month: str, cost: int) -> None:
        self._owed[(key_uuid, month)] = self._owed.get((key_uuid, month), 0) + cost
        if self.redis_up:
            self._spawn(self._pay_owed())

    async def _pay_owed(self) -> None:
        """Costs settled while Redis was away, added to months Redis still counts (a month it lost
        is read from the ledger anew, which has them)."""
        assert self.redis is not None
        while self._owed:
            (key_uuid, month), cost = self._owed.popitem()
            try:
                await self.redis.add_spend(key_uuid, month, cost)
            except BaseException:
                self._owed[(key_uuid, month)] = self._owed.get((key_uuid, month), 0) + cost
                raise

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("limits background task failed: %s", _why(task.exception()))  # type: ignore[arg-type]

    # -- Redis health ------------------------------------------------------------------------------
    def _went_down(self, exc: BaseException) -> None:
        if not self.redis_up:
            return
        self.redis_up = False
        REDIS_UP.set(0)
        log.warning(
            "Redis unreachable for key limits (%s): each process enforces them alone until it is back",
            _why(exc),
        )
        self.local.reset()  # the fallback starts from the ledger, not from an old outage's counts
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe())

    async def _probe(self) -> None:
        assert self.redis is not None
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                await self.redis.ping()
                await self._pay_owed()
                while self._unsure:
                    unsure = self._unsure.pop()
                    await self.redis.settle(unsure, 0, 0, month_of(time.time()), None)
            except _redis_errors():
                continue
            self.redis_up = True
            REDIS_UP.set(1)
            log.info("Redis reachable again: key limits are shared across replicas again")
            return

    async def _renew_forever(self) -> None:
        assert self.redis is not None
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            now = time.monotonic()
            leases: dict[str, list[str]] = {}
            for request_id, (reservation, since) in list(self._on_redis.items()):
                if now - since > MAX_LEASE_AGE:
                    del self._on_redis[request_id]
                else:
                    leases.setdefault(reservation.key_uuid, []).append(request_id)
            if leases and self.redis_up:
                try:
                    await self.redis.renew(leases)
                except _redis_errors() as exc:
                    self._went_down(exc)

    # -- management (API, CLI, panel) -------------------------------------------------------------
    async def get(self, key_uuid: str) -> LimitsStatus:
        """The key's limits, its cost this month (ledger) and what its requests in flight reserve."""
        await asyncio.to_thread(self._check_key, key_uuid)
        limits = await asyncio.to_thread(self.repo.get, key_uuid)
        month = month_of(time.time())
        spent = await asyncio.to_thread(self.repo.month_cost_nano, key_uuid, month_start_ms(month))
        return LimitsStatus(limits, spent, await self.reserved_nano(key_uuid))

    async def set(self, key_uuid: str, limits: KeyLimits) -> LimitsStatus:
        """Store a key's limits (all four: None removes one); every replica applies them at once."""
        await asyncio.to_thread(self._check_key, key_uuid)
        await asyncio.to_thread(self.repo.set, key_uuid, limits)
        await self.key_cache.changed()  # the announcement other processes re-read their table on
        log.info("limits of model access key %s set: %s", key_uuid, limits.to_dict())
        return await self.get(key_uuid)

    async def reserved_nano(self, key_uuid: str) -> int:
        if self.redis is not None and self.redis_up:
            try:
                return await self.redis.reserved_nano(key_uuid)
            except _redis_errors() as exc:
                self._went_down(exc)
        return self.local.reserved_nano(key_uuid)

    def _check_key(self, key_uuid: str) -> None:
        if len(key_uuid) > 64:
            raise NotFound(f"model access key {key_uuid[:64]}... not found")
        self.key_cache.repo.get(key_uuid)  # NotFound for an unknown or deleted key
