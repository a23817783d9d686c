"""Bearer authentication for the inference API, with an in-process key cache.

The hot path hashes the secret and looks it up in a dict: no database round trip. Revocation
stays immediate because every change to keys (from this process, another worker, or the CLI)
bumps an epoch file in the data dir; each lookup compares the file's stat with the last one
seen (one `stat` syscall, ~1 us) and drops the cache when it changed. With INFERGATE_REDIS_URL
the bump is also published to replicas on other hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections import OrderedDict
from pathlib import Path

from infergate.errors import AuthenticationFailed
from infergate.storage.keys import KeyRecord, KeyRepository, hash_secret

log = logging.getLogger("infergate.auth")
REDIS_CHANNEL = "infergate:keys"
NEGATIVE_CACHE_SIZE = 10_000


class RevocationEpoch:
    """A file whose (mtime, inode, size) changes whenever any key changes."""

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


class KeyCache:
    """Secret-hash -> KeyRecord, with negative entries, invalidated by the revocation epoch."""

    def __init__(self, repo: KeyRepository, epoch: RevocationEpoch) -> None:
        self.repo = repo
        self.epoch = epoch
        self._stamp = epoch.stamp()
        self._known: dict[str, KeyRecord] = {}
        self._unknown: OrderedDict[str, None] = OrderedDict()
        self._redis_task: asyncio.Task | None = None
        self._redis = None

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()

    def _check_epoch(self) -> None:
        stamp = self.epoch.stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self.clear()

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        secret = parse_bearer(authorization)
        digest = hash_secret(secret)
        self._check_epoch()
        record = self._known.get(digest)
        if record is not None:
            return record
        if digest not in self._unknown:
            stamp = self._stamp
            record = await asyncio.to_thread(self.repo.find_by_hash, digest)
            if stamp == self._stamp:  # don't cache an answer that a concurrent revocation made stale
                if record is not None:
                    self._known[digest] = record
                else:
                    self._unknown[digest] = None
                    if len(self._unknown) > NEGATIVE_CACHE_SIZE:
                        self._unknown.popitem(last=False)
            if record is not None:
                return record
        raise AuthenticationFailed(
            "Incorrect API key provided. Create a model access key and send it as "
            "'Authorization: Bearer <key>'."
        )

    async def changed(self) -> None:
        """Called after this process changed a key: drop the cache here, tell everyone else."""
        self.epoch.bump()
        self._stamp = self.epoch.stamp()
        self.clear()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.publish(REDIS_CHANNEL, "changed")

    async def start_fanout(self, redis_url: str | None) -> None:
        if not redis_url:
            return
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(redis_url)
        self._redis_task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()  # type: ignore[union-attr]
                await pubsub.subscribe(REDIS_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening through Redis restarts
                log.warning("redis revocation fan-out lost: %s; retrying", exc)
                self.clear()
                await asyncio.sleep(1)

    async def close(self) -> None:
        if self._redis_task is not None:
            self._redis_task.cancel()
            with contextlib.suppress(BaseException):
                await self._redis_task
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()


def parse_bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "Missing bearer authentication in header: send 'Authorization: Bearer <key>'.",
            code="missing_api_key",
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(
            "Authorization header must be 'Bearer <key>'.", code="invalid_authorization"
        )
    return token


def check_admin(authorization: str | None, admin_token: str | None) -> None:
    """The management API (/v2) takes the admin token; without one configured, it is closed."""
    token = parse_bearer(authorization)
    if not admin_token or not secrets.compare_digest(token.encode(), admin_token.encode()):
        raise AuthenticationFailed(
            "Unable to authenticate you: the management API needs INFERGATE_ADMIN_TOKEN.", code="unauthorized"
        )
