"""The shared limiter: the same buckets, slots and reservations as local.py, kept in Redis and changed
only by Lua scripts, so every replica sees one state and a check and its reservation are one atomic step.

Per key, under one hash tag (one cluster slot): `ig:lim:{uuid}` (buckets and the reserved sum),
`ig:lim:{uuid}:leases` (in-flight requests, scored by when their lease ends), `ig:lim:{uuid}:resv`
(each in-flight request's reservation) and `ig:lim:{uuid}:spent:YYYY-MM` (the month's settled cost,
read once from the ledger, then kept current by every settle). A process that dies with requests in
flight stops renewing their leases: the next admission of that key frees their slots and reservations.
Time is Redis's own (TIME), so replicas with skewed clocks still share one bucket.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from infergate.limits.model import (
    REFUSED_BUDGET,
    REFUSED_CONCURRENCY,
    REFUSED_RPM,
    REFUSED_TPM,
    KeyLimits,
    Need,
    Verdict,
)

LEASE_MS = 60_000  # an in-flight request's lease; renewed every LEASE_MS / 4 while it runs
IDLE_MS = 3 * 86_400_000  # state of a key unused this long goes away
SPENT_TTL_MS = 40 * 86_400_000  # a month's spend outlives its month
REFUSALS = {1: REFUSED_RPM, 2: REFUSED_TPM, 3: REFUSED_CONCURRENCY, 4: REFUSED_BUDGET}

_NOW_AND_PURGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(expired) do
  local v = redis.call('HGET', KEYS[3], id)
  if v then
    redis.call('HINCRBY', KEYS[1], 'reserved', 0 - tonumber(string.match(v, '^(%d+)')))
    redis.call('HDEL', KEYS[3], id)
  end
  redis.call('ZREM', KEYS[2], id)
end
"""

# ARGV: request id, lease ms, rpm, tpm, concurrency, budget nano (-1: no limit), cost nano, tokens, idle ms
# -> {status, retry ms, requests left, requests reset ms, tokens left, tokens reset ms, spent, reserved}
ADMIT = (
    _NOW_AND_PURGE
    + """
local rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
local conc, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local cost, tokens, idle = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local W = 60000
local spent = 0
if budget >= 0 then
  local s = redis.call('GET', KEYS[4])
  if not s then return {-1} end
  spent = tonumber(s)
end
local st = redis.call('HMGET', KEYS[1], 'rq', 'rq_ts', 'tk', 'tk_ts', 'reserved')
local reserved = tonumber(st[5] or '0')
local rq, tk
if rpm > 0 then
  rq = math.min(rpm, tonumber(st[1] or rpm) + math.max(0, now - tonumber(st[2] or now)) * rpm / W)
end
if tpm > 0 then
  tk = math.min(tpm, tonumber(st[3] or tpm) + math.max(0, now - tonumber(st[4] or now)) * tpm / W)
end
local status, retry = 0, 0
if conc > 0 and redis.call('ZCARD', KEYS[2]) >= conc then
  status, retry = 3, 1000
elseif rq and rq < 1 then
  status, retry = 1, math.ceil((1 - rq) * W / rpm)
elseif tk and tk < tokens then
  status, retry = 2, math.ceil((tokens - tk) * W / tpm)
elseif budget >= 0 and spent + reserved + cost > budget then
  status = 4
end
if status == 0 then
  if rq then rq = rq - 1 end
  if tk then tk = tk - tokens end
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[7] .. ':' .. ARGV[8])
  reserved = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[7])
  redis.call('PEXPIRE', KEYS[2], idle)
  redis.call('PEXPIRE', KEYS[3], idle)
end
local out = {status, retry, 0, 0, 0, 0, spent, reserved}
if rq then
  redis.call('HSET', KEYS[1], 'rq', rq, 'rq_ts', now)
  out[3], out[4] = math.max(0, math.floor(rq)), math.ceil((rpm - rq) * W / rpm)
end
if tk then
  redis.call('HSET', KEYS[1], 'tk', tk, 'tk_ts', now)
  out[5], out[6] = math.max(0, math.floor(tk)), math.ceil((tpm - tk) * W / tpm)
end
redis.call('PEXPIRE', KEYS[1], idle)
return out
"""
)

# ARGV: request id, real cost nano, real tokens (-1: unknown), tpm (-1: none)
SETTLE = """
local v = redis.call('HGET', KEYS[3], ARGV[1])
if v then
  local c, reserved_tokens = string.match(v, '^(%d+):(%d+)$')
  redis.call('HINCRBY', KEYS[1], 'reserved', 0 - tonumber(c))
  redis.call('HDEL', KEYS[3], ARGV[1])
  local real, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
  if tpm > 0 and real >= 0 and real < tonumber(reserved_tokens) then
    local tk = redis.call('HGET', KEYS[1], 'tk')
    if tk then
      redis.call('HSET', KEYS[1], 'tk', math.min(tpm, tonumber(tk) + tonumber(reserved_tokens) - real))
    end
  end
end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('INCRBY', KEYS[4], ARGV[2]) end
return 1
"""

# -> the reserved sum, expired leases dropped first
PEEK = _NOW_AND_PURGE + "return tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')\n"

# KEYS[1] leases; ARGV: lease ms, request ids... (only leases still present are extended)
RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
return 1
"""

# KEYS[1] spent; ARGV[1] nano: added only to a month already counted (else the ledger is read anew)
ADD_IF_COUNTED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


def key_names(key_uuid: str, month: str) -> list[str]:
    base = f"ig:lim:{{{key_uuid}}}"
    return [base, f"{base}:leases", f"{base}:resv", f"{base}:spent:{month}"]


def _arg(value: int | None) -> int:
    return -1 if value is None else value


@dataclass(slots=True)
class RedisReservation:
    key_uuid: str
    request_id: str
    need: Need


Call = tuple[Any, list[str], list[Any], "asyncio.Future[Any]"]  # script, keys, args, its result


class NeedsSpend(Exception):
    """The month's spend of this key is not in Redis yet: read it from the ledger and `seed_spend`."""


class RedisLimiter:
    def __init__(self, url: str, timeout: float = 2.0, lease_ms: int = LEASE_MS) -> None:
        import redis.asyncio as aioredis

        self.lease_ms = lease_ms
        # Short timeouts: an unreachable Redis must turn into the per-process fallback at once.
        # RESP2: its replies parse with less work than RESP3's, and nothing here needs RESP3.
        self.client: Any = aioredis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, protocol=2
        )
        self._pending: list[Call] = []
        self._flusher: asyncio.Task[None] | None = None
        self._admit = self.client.register_script(ADMIT)
        self._settle = self.client.register_script(SETTLE)
        self._peek = self.client.register_script(PEEK)
        self._renew = self.client.register_script(RENEW)
        self._add = self.client.register_script(ADD_IF_COUNTED)

    async def try_admit(
        self, key_uuid: str, request_id: str, limits: KeyLimits, need: Need, month: str
    ) -> tuple[Verdict, RedisReservation | None]:
        sent = self._enqueue(
            self._admit,
            key_names(key_uuid, month),
            [
                request_id,
                self.lease_ms,
                _arg(limits.rpm),
                _arg(limits.tpm),
                _arg(limits.max_concurrency),
                _arg(limits.budget_nano),
                need.cost_nano,
                need.tokens,
                IDLE_MS,
            ],
        )
        try:
            out = await asyncio.shield(sent)
        except asyncio.CancelledError:  # the client left: a reservation made meanwhile is given back
            gone = RedisReservation(key_uuid, request_id, need)
            sent.add_done_callback(lambda f: self._give_back(f, gone, month, limits.tpm))
            raise
        status = int(out[0])
        if status == -1:
            raise NeedsSpend
        verdict = Verdict(
            REFUSALS.get(status),
            retry_after=int(out[1]) / 1000,
            requests_remaining=int(out[2]),
            requests_reset=int(out[3]) / 1000,
            tokens_remaining=int(out[4]),
            tokens_reset=int(out[5]) / 1000,
            spent_nano=int(out[6]),
            reserved_nano=int(out[7]),
        )
        return verdict, (None if verdict.refused else RedisReservation(key_uuid, request_id, need))

    async def seed_spend(self, key_uuid: str, month: str, spent_nano: int) -> None:
        await self.client.set(key_names(key_uuid, month)[3], spent_nano, nx=True, px=SPENT_TTL_MS)

    async def settle(
        self, reservation: RedisReservation, cost_nano: int, tokens: int | None, month: str, tpm: int | None
    ) -> None:
        keys = key_names(reservation.key_uuid, month)
        await self._call(self._settle, keys, [reservation.request_id, cost_nano, _arg(tokens), _arg(tpm)])

    def _give_back(
        self, sent: asyncio.Future[Any], reservation: RedisReservation, month: str, tpm: int | None
    ) -> None:
        if not sent.cancelled() and sent.exception() is None and int(sent.result()[0]) == 0:
            self._enqueue(
                self._settle,
                key_names(reservation.key_uuid, month),
                [reservation.request_id, 0, 0, _arg(tpm)],
            )

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self._enqueue(script, keys, args)

    def _enqueue(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Run a script in the next pipeline: calls made while one pipeline is on its way go together
        in the next one (group commit), so under load many requests share one write and one read."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._run_batch(batch)
            except BaseException as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (*_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    if isinstance(result, Exception):
                        done.set_exception(result)
                    else:
                        done.set_result(result)

    async def _run_batch(self, batch: list[Call]) -> list[Any]:
        from redis.exceptions import NoScriptError

        results = await self._pipeline(batch)
        again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if again:  # Redis (re)started: its script cache is empty; only those calls did not run
            for script in {batch[i][0] for i in again}:
                await self.client.script_load(script.script)
            for i, result in zip(again, await self._pipeline([batch[i] for i in again]), strict=True):
                results[i] = result
        return results

    async def _pipeline(self, batch: list[Call]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def add_spend(self, key_uuid: str, month: str, cost_nano: int) -> None:
        await self._add(keys=[key_names(key_uuid, month)[3]], args=[cost_nano])

    async def reserved_nano(self, key_uuid: str) -> int:
        return int(await self._peek(keys=key_names(key_uuid, "-")))

    async def renew(self, leases: dict[str, list[str]]) -> None:
        """Extend the leases of this process's in-flight requests (key uuid -> request ids)."""
        for key_uuid, request_ids in leases.items():
            await self._renew(keys=[key_names(key_uuid, "-")[1]], args=[self.lease_ms, *request_ids])

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()


def reserved_nano_sync(url: str, key_uuid: str) -> int:
    """The reserved sum as Redis has it, for the CLI (which has no event loop)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return int(client.register_script(PEEK)(keys=key_names(key_uuid, "-")))
    finally:
        client.close()
