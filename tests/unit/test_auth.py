"""The key cache, the revocation epoch and Redis fan-out, on a real SQLite database and real Redis.

Time in the cache is an injected clock, so TTL expiry is exact; interleavings with a revocation are
made by holding the real repository's lookup at a gate.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from sqlalchemy import Engine, create_engine, update

from infergate.auth import KeyCache, RevocationEpoch
from infergate.config import normalize_database_url
from infergate.errors import AuthenticationFailed, InvalidRequest
from infergate.revocation import REDIS_CHANNEL, publish_with_retry
from infergate.storage.db import api_keys, open_database
from infergate.storage.keys import KeyRecord, KeyRepository, hash_secret, new_secret
from tests.support.redis_server import RedisServer

T = TypeVar("T")
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedRepository(KeyRepository):
    """The real repository; a lookup can be held after it read the row, and lookups are counted."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.lookups = 0
        self.gate = threading.Event()
        self.gate.set()
        self.reached = threading.Event()

    def find_by_hash(self, secret_hash: str) -> KeyRecord | None:
        self.lookups += 1
        record = super().find_by_hash(secret_hash)
        self.reached.set()
        self.gate.wait(10)
        return record


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = open_database(normalize_database_url(f"sqlite:///{tmp_path / 'infergate.db'}"))
    yield db
    db.dispose()


@pytest.fixture
def repo(engine: Engine) -> GatedRepository:
    return GatedRepository(engine)


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


async def rejected(cache: KeyCache, secret: str) -> bool:
    try:
        await cache.authenticate(bearer(secret))
    except AuthenticationFailed:
        return True
    return False


async def eventually(check: Callable[[], Coroutine[Any, Any, bool]], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.01)
    return False


# --- the revocation epoch ---------------------------------------------------------------------


def test_epoch_bump_is_seen_by_another_process_view(tmp_path: Path) -> None:
    mine, theirs = RevocationEpoch(tmp_path), RevocationEpoch(tmp_path)
    stamps = {mine.stamp()}
    for _ in range(20):  # a new inode each time: distinct even within one mtime tick
        theirs.bump()
        stamps.add(mine.stamp())
    assert len(stamps) == 21


def test_epoch_file_missing_is_a_stamp_too(tmp_path: Path) -> None:
    epoch = RevocationEpoch(tmp_path)
    before = epoch.stamp()
    epoch.path.unlink()
    assert epoch.stamp() == (0, 0) != before


def test_epoch_change_drops_the_cache(repo: GatedRepository, tmp_path: Path) -> None:
    record, secret = repo.create("k")

    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=3600, clock=Clock())
        assert (await cache.authenticate(bearer(secret))).uuid == record.uuid
        repo.delete(record.uuid)  # the database alone: the cache does not know yet
        assert (await cache.authenticate(bearer(secret))).uuid == record.uuid
        assert repo.lookups == 1
        RevocationEpoch(tmp_path).bump()  # what the CLI or another worker does after a change
        assert await rejected(cache, secret)

    run(scenario())


# --- TTL ----------------------------------------------------------------------------------------


def test_entry_is_revalidated_after_the_ttl(repo: GatedRepository, tmp_path: Path) -> None:
    record, secret = repo.create("k")
    clock = Clock()

    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=5.0, clock=clock)
        await cache.authenticate(bearer(secret))
        clock.now += 4.9
        await cache.authenticate(bearer(secret))
        assert repo.lookups == 1  # the hot path: no database
        clock.now += 0.2  # 5.1 s after the lookup: asked again, still there
        await cache.authenticate(bearer(secret))
        assert repo.lookups == 2
        repo.delete(record.uuid)  # a revocation whose message was lost
        clock.now += 4.9
        assert not await rejected(cache, secret)  # within the TTL of the last check
        clock.now += 0.2
        assert await rejected(cache, secret)

    run(scenario())


def test_negative_entry_expires(repo: GatedRepository, engine: Engine, tmp_path: Path) -> None:
    secret = new_secret()
    clock = Clock()

    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=5.0, clock=clock)
        assert await rejected(cache, secret)
        # the secret becomes valid elsewhere (e.g. regenerated on another host, its message lost)
        record, _ = repo.create("k")
        with engine.begin() as conn:
            conn.execute(
                update(api_keys).where(api_keys.c.uuid == record.uuid).values(secret_hash=hash_secret(secret))
            )
        assert await rejected(cache, secret)
        assert repo.lookups == 1  # the negative entry answered
        clock.now += 5.1
        assert (await cache.authenticate(bearer(secret))).uuid == record.uuid

    run(scenario())


def test_concurrent_lookups_of_an_expired_key_share_one_query(repo: GatedRepository, tmp_path: Path) -> None:
    record, secret = repo.create("k")
    clock = Clock()

    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=5.0, clock=clock)
        await cache.authenticate(bearer(secret))
        clock.now += 6
        repo.gate.clear()
        repo.reached.clear()
        tasks = [asyncio.create_task(cache.authenticate(bearer(secret))) for _ in range(20)]
        await asyncio.to_thread(repo.reached.wait, 10)
        await asyncio.sleep(0)
        repo.gate.set()
        results = await asyncio.gather(*tasks)
        assert {r.uuid for r in results} == {record.uuid}
        assert repo.lookups == 2  # the first fill, then one revalidation for all twenty

    run(scenario())


def test_a_waiter_that_goes_away_does_not_cancel_the_shared_lookup(
    repo: GatedRepository, tmp_path: Path
) -> None:
    record, secret = repo.create("k")

    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=5.0, clock=Clock())
        repo.gate.clear()
        first = asyncio.create_task(cache.authenticate(bearer(secret)))
        await asyncio.to_thread(repo.reached.wait, 10)
        second = asyncio.create_task(cache.authenticate(bearer(secret)))
        await asyncio.sleep(0)
        first.cancel()  # the client disconnected
        repo.gate.set()
        assert (await second).uuid == record.uuid
        assert repo.lookups == 1

    run(scenario())


@pytest.mark.parametrize("how", ["this process", "redis message"])
def test_stale_answer_is_not_cached_during_a_concurrent_revocation(
    repo: GatedRepository, tmp_path: Path, how: str
) -> None:
    record, secret = repo.create("k")

    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=3600, clock=Clock())
        repo.gate.clear()
        before = asyncio.create_task(cache.authenticate(bearer(secret)))
        await asyncio.to_thread(repo.reached.wait, 10)  # the row is read: the key still existed
        repo.delete(record.uuid)
        if how == "this process":
            await cache.changed()
        else:
            cache.clear()  # what the Redis listener does on a message from another host
        repo.reached.clear()
        after = asyncio.create_task(cache.authenticate(bearer(secret)))
        await asyncio.to_thread(repo.reached.wait, 10)  # its own lookup, not the one from before
        repo.gate.set()
        assert (await before).uuid == record.uuid  # it began before the revocation
        with pytest.raises(AuthenticationFailed):
            await after
        assert await rejected(cache, secret)  # and the stale answer was not kept
        assert repo.lookups == 2

    run(scenario())


def test_database_down_keeps_a_confirmed_key_and_rejects_unknown_ones(
    repo: GatedRepository, tmp_path: Path
) -> None:
    record, secret = repo.create("k")
    clock = Clock()

    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=5.0, clock=clock)
        await cache.authenticate(bearer(secret))
        working = repo.engine
        repo.engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")  # cannot be opened
        clock.now += 6
        assert (await cache.authenticate(bearer(secret))).uuid == record.uuid
        lookups = repo.lookups
        await cache.authenticate(bearer(secret))
        assert repo.lookups == lookups  # asked again only after another TTL, not per request
        with pytest.raises(Exception, match="unable to open database"):
            await cache.authenticate(bearer(new_secret()))
        repo.engine = working
        repo.delete(record.uuid)
        clock.now += 6
        assert await rejected(cache, secret)

    run(scenario())


# --- key names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\x00b", "tab\there", "line\n", "\x1b[31mred", "del\x7f", "c1\x85"])
def test_repository_rejects_control_characters_in_names(repo: GatedRepository, name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        repo.create(name)
    assert info.value.param == "name"
    record, _ = repo.create("fine name é 名前")
    with pytest.raises(InvalidRequest):
        repo.rename(record.uuid, name)


# --- Redis --------------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def local_redis_or_skip() -> None:
    try:
        redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at 127.0.0.1:6379: {exc}")


def test_fanout_through_the_local_redis(repo: GatedRepository, tmp_path: Path) -> None:
    local_redis_or_skip()
    record, secret = repo.create("k")

    async def scenario() -> None:
        # two servers on separate hosts: separate epoch files, one database, one Redis
        here = KeyCache(repo, RevocationEpoch(tmp_path / "a"), ttl=3600, clock=Clock())
        there = KeyCache(repo, RevocationEpoch(tmp_path / "b"), ttl=3600, clock=Clock())
        for cache in (here, there):
            await cache.start_fanout(LOCAL_REDIS)
            assert cache.fanout is not None
            await asyncio.wait_for(cache.fanout.subscribed.wait(), 10)
        try:
            await there.authenticate(bearer(secret))
            repo.delete(record.uuid)
            await here.changed()
            assert await eventually(lambda: rejected(there, secret))
        finally:
            await here.close()
            await there.close()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run(scenario())


def test_server_publish_is_retried_in_the_background(
    repo: GatedRepository, tmp_path: Path, own_redis: RedisServer
) -> None:
    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=3600, clock=Clock())
        await cache.start_fanout(own_redis.url)
        fanout = cache.fanout
        assert fanout is not None
        await asyncio.wait_for(fanout.subscribed.wait(), 10)
        delays: list[float] = []
        go = asyncio.Event()

        async def sleep(seconds: float) -> None:
            delays.append(seconds)
            await go.wait()

        fanout.sleep = sleep
        await asyncio.to_thread(own_redis.stop)
        await cache.changed()  # the first attempt fails at once; the change is not held up by retries
        assert fanout._retrier is not None and not fanout._retrier.done()
        await asyncio.to_thread(own_redis.start)
        listener = aioredis.from_url(own_redis.url).pubsub()
        await listener.subscribe(REDIS_CHANNEL)
        go.set()
        message = None
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            message = await listener.get_message(ignore_subscribe_messages=True, timeout=1)
        assert message is not None and message["data"] == b"changed"
        await fanout._retrier
        await listener.aclose()
        await cache.close()
        assert delays[0] == fanout.backoff

    run(scenario())


def test_server_publish_retries_are_bounded_with_backoff(
    repo: GatedRepository, tmp_path: Path, own_redis: RedisServer
) -> None:
    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=3600, clock=Clock())
        await cache.start_fanout(own_redis.url)
        fanout = cache.fanout
        assert fanout is not None
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)

        fanout.sleep = sleep
        await asyncio.to_thread(own_redis.stop)
        await cache.changed()
        assert fanout._retrier is not None
        await asyncio.wait_for(fanout._retrier, 30)
        assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
        await cache.close()

    run(scenario())


def test_listener_that_reconnects_drops_the_cache(
    repo: GatedRepository, tmp_path: Path, own_redis: RedisServer
) -> None:
    record, secret = repo.create("k")

    async def scenario() -> None:
        cache = KeyCache(repo, RevocationEpoch(tmp_path), ttl=3600, clock=Clock())
        await cache.start_fanout(own_redis.url)
        fanout = cache.fanout
        assert fanout is not None
        await asyncio.wait_for(fanout.subscribed.wait(), 10)
        await cache.authenticate(bearer(secret))
        await asyncio.to_thread(own_redis.stop)
        repo.delete(record.uuid)  # its message was sent while Redis was down, and lost
        deadline = time.monotonic() + 10
        while fanout.subscribed.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not await rejected(cache, secret)
        await asyncio.to_thread(own_redis.start)
        await asyncio.wait_for(fanout.subscribed.wait(), 10)
        assert await rejected(cache, secret)
        await cache.close()

    run(scenario())


def test_cli_publish_is_retried(own_redis: RedisServer) -> None:
    own_redis.stop()
    delays: list[float] = []
    listener = redis.Redis(port=own_redis.port).pubsub()

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 2:  # Redis comes back during the retries
            own_redis.start()
            listener.subscribe(REDIS_CHANNEL)
            assert listener.get_message(timeout=5)["type"] == "subscribe"

    assert publish_with_retry(own_redis.url, sleep=sleep)
    assert delays == [0.2, 0.4]
    message = listener.get_message(timeout=5)
    assert message is not None and message["data"] == b"changed"
    listener.close()


def test_cli_publish_gives_up_with_a_warning(
    own_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    own_redis.stop()
    delays: list[float] = []
    assert not publish_with_retry(own_redis.url, attempts=3, sleep=delays.append)
    assert delays == [0.2, 0.4, 0.8]
    err = capsys.readouterr().err
    assert "not published" in err and "INFERGATE_KEY_CACHE_TTL" in err
    assert own_redis.url not in err
