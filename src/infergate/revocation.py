"""How servers learn that model access keys changed: the epoch file (this host) and Redis (other hosts).

Every change to keys, from any server process or the CLI, bumps the epoch file in the data dir;
each process compares its stat on every lookup. With INFERGATE_REDIS_URL the change is also
published on a Redis channel that every server subscribes to. A publish that fails is retried with
backoff (in the background on the server, so the request that changed a key is not held up), and a
listener that reconnects after an outage drops its cache, since it may have missed messages. Whatever
is still lost, the key cache's TTL bounds (see auth.KeyCache).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("infergate.auth")
REDIS_CHANNEL = "infergate:keys"
PUBLISH_TIMEOUT = 1.0  # seconds for one publish; a stopped Redis refuses at once
PUBLISH_ATTEMPTS = 6  # 0.1 + 0.2 + ... + 3.2 s: about 6 s of retries, then the TTL has it covered
PUBLISH_BACKOFF = 0.1


class RevocationEpoch:
    """A file whose (mtime, inode) changes whenever any key changes."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "keys.epoch"
        if not self.path.exists():
            self.bump()

    def bump(self) -> None:
        tmp = self.path.with_name(f".keys.epoch.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.write_text(secrets.token_hex(8))
        os.replace(tmp, self.path)  # a new inode: changes are seen even within one mtime tick

    def stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_ino)


def _why(exc: BaseException) -> str:
    # The exception, never the URL: a Redis URL may carry a password.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RedisFanout:
    """Publishes "keys changed" to other hosts, with retries, and calls `on_change` when they publish."""

    def __init__(
        self,
        url: str,
        on_change: Callable[[], None],
        *,
        attempts: int = PUBLISH_ATTEMPTS,
        backoff: float = PUBLISH_BACKOFF,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        import redis.asyncio as aioredis

        self.on_change = on_change
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep  # injectable, so tests decide when a retry happens
        # Two clients: publishes time out, the subscription blocks on its read indefinitely.
        self._publisher = aioredis.from_url(url, socket_timeout=PUBLISH_TIMEOUT, socket_connect_timeout=2)
        self._subscriber = aioredis.from_url(url, socket_connect_timeout=2)
        self._listener: asyncio.Task[None] | None = None
        self._retrier: asyncio.Task[None] | None = None
        self._due = False  # one more publish owed by the running retrier
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def announce(self) -> None:
        """One attempt now; if it fails, retries continue in the background."""
        if self._retrier is not None and not self._retrier.done():
            self._due = True  # "changed" carries no payload: one later publish covers every change
            return
        if await self._publish_once():
            return
        self._due = True
        self._retrier = asyncio.create_task(self._retry())

    async def _publish_once(self, retry: int = 0) -> bool:
        try:
            await asyncio.wait_for(self._publisher.publish(REDIS_CHANNEL, "changed"), PUBLISH_TIMEOUT)
            if retry:
                log.info("key change published to Redis at retry %d", retry)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not retry:
                log.warning("key change not published to Redis (%s); retrying in the background", _why(exc))
            else:
                log.debug("key change not published to Redis at retry %d (%s)", retry, _why(exc))
            return False

    async def _retry(self) -> None:
        delay, retry = self.backoff, 0
        while True:
            await self.sleep(delay)
            retry += 1
            self._due = False  # a publish that succeeds covers every change announced before it
            if await self._publish_once(retry):
                if not self._due:
                    return
                delay, retry = 0.0, 0  # a change came in while publishing: publish once more
                continue
            if retry >= self.attempts:
                log.error(
                    "key change not published to Redis after %d retries: servers on other hosts drop "
                    "their cached keys within INFERGATE_KEY_CACHE_TTL",
                    retry,
                )
                self._due = False
                return
            delay = min(max(delay * 2, self.backoff), 30.0)

    async def _listen(self) -> None:
        down = False
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(REDIS_CHANNEL)
                # Messages sent while we were not subscribed are lost: forget everything once.
                self.on_change()
                self.subscribed.set()
                log.info("listening for key changes on Redis%s", " again" if down else "")
                down = False
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening through Redis restarts
                self.subscribed.clear()
                if not down:
                    log.warning("Redis key fan-out lost (%s); reconnecting every second", _why(exc))
                    down = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(1)

    async def close(self) -> None:
        if self._retrier is not None and not self._retrier.done():
            log.warning("a key change was not published to Redis before shutdown")
        for task in (self._listener, self._retrier):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for client in (self._publisher, self._subscriber):
            with contextlib.suppress(Exception):
                await client.aclose()


def publish_with_retry(
    url: str,
    *,
    attempts: int = 5,
    backoff: float = 0.2,
    sleep: Callable[[float], object] = time.sleep,
) -> bool:
    """The CLI's publish: blocking, a few retries with backoff; a warning on stderr if all fail."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=PUBLISH_TIMEOUT, socket_connect_timeout=2)
    delay = backoff
    try:
        for attempt in range(attempts + 1):
            if attempt:
                sleep(delay)
                delay *= 2
            try:
                client.publish(REDIS_CHANNEL, "changed")
                return True
            except Exception as exc:
                error = _why(exc)
        print(
            f"infergate: warning: key change not published to Redis ({error}); servers on other hosts "
            "drop their cached keys within INFERGATE_KEY_CACHE_TTL",
            file=sys.stderr,
        )
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()
