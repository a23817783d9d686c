"""Bearer authentication for the inference API, with an in-process key cache.

The hot path hashes the secret and looks it up in a dict: no database round trip. Revocation
stays immediate because every change to keys (from this process, another worker, or the CLI)
bumps an epoch file in the data dir; each lookup compares the file's stat with the last one
seen (one `stat` syscall, ~1 us) and drops the cache when it changed. With INFERGATE_REDIS_URL
the change is also published to replicas on other hosts (revocation.py). Should a message still
be lost, every entry is revalidated against the database once it is older than the TTL
(INFERGATE_KEY_CACHE_TTL, 5 s), so no deleted key keeps working longer than that.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from infergate.errors import AuthenticationFailed
from infergate.revocation import REDIS_CHANNEL, RedisFanout, RevocationEpoch
from infergate.storage.keys import KeyRecord, KeyRepository, hash_secret

__all__ = ["REDIS_CHANNEL", "KeyCache", "RevocationEpoch", "check_admin", "parse_bearer"]

log = logging.getLogger("infergate.auth")
NEGATIVE_CACHE_SIZE = 10_000
DEFAULT_TTL = 5.0


def _rejected() -> AuthenticationFailed:
    return AuthenticationFailed(
        "Incorrect API key provided. Create a model access key and send it as 'Authorization: Bearer <key>'."
    )


class KeyCache:
    """Secret-hash -> KeyRecord, with negative entries; dropped when the revocation epoch moves or a
    Redis message says keys changed, and revalidated entry by entry after `ttl` seconds."""

    def __init__(
        self,
        repo: KeyRepository,
        epoch: RevocationEpoch,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.epoch = epoch
        self.ttl = ttl
        self._clock = clock  # injectable for tests
        self._stamp = epoch.stamp()
        self._known: dict[str, tuple[KeyRecord, float]] = {}  # digest -> (record, expires at)
        self._unknown: OrderedDict[str, float] = OrderedDict()  # digest -> expires at
        self._loading: dict[str, asyncio.Task[KeyRecord | None]] = {}  # one lookup per digest at a time
        self._generation = 0  # moves on every clear: a lookup that started before must not be cached
        self.fanout: RedisFanout | None = None

    def clear(self) -> None:
        self._generation += 1
        self._known.clear()
        self._unknown.clear()
        self._loading.clear()  # later requests must not join a lookup that predates the change

    def _check_epoch(self) -> None:
        stamp = self.epoch.stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self.clear()

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        secret = parse_bearer(authorization)
        digest = hash_secret(secret)
        self._check_epoch()
        now = self._clock()
        entry = self._known.get(digest)
        if entry is not None:
            if now < entry[1]:
                return entry[0]
        else:
            expires = self._unknown.get(digest)
            if expires is not None and now < expires:
                raise _rejected()
        record = await self._load(digest)
        if record is None:
            raise _rejected()
        return record

    async def _load(self, digest: str) -> KeyRecord | None:
        task = self._loading.get(digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(digest))
            self._loading[digest] = task
            task.add_done_callback(lambda t: self._loaded(digest, t))
        # shielded: a client that goes away does not cancel the lookup that others wait for
        return await asyncio.shield(task)

    def _loaded(self, digest: str, task: asyncio.Task[KeyRecord | None]) -> None:
        if self._loading.get(digest) is task:
            del self._loading[digest]
        if not task.cancelled():
            task.exception()  # retrieved here, in case every waiter went away

    async def _fetch(self, digest: str) -> KeyRecord | None:
        generation = self._generation
        try:
            record = await asyncio.to_thread(self.repo.find_by_hash, digest)
        except Exception as exc:
            entry = self._known.get(digest)
            if entry is None or generation != self._generation:
                raise
            # The database cannot answer: keep serving a key it confirmed before (inference goes on
            # through a database outage, and keys cannot be changed without it), and ask again later.
            log.warning(
                "key %s not revalidated (database: %s); still accepted, retried in %.1f s",
                entry[0].uuid,
                type(exc).__name__,
                self.ttl,
            )
            self._known[digest] = (entry[0], self._clock() + self.ttl)
            return entry[0]
        if generation == self._generation:  # no revocation happened meanwhile: the answer is current
            expires = self._clock() + self.ttl
            if record is not None:
                self._known[digest] = (record, expires)
                self._unknown.pop(digest, None)
            else:
                self._known.pop(digest, None)
                self._unknown[digest] = expires
                self._unknown.move_to_end(digest)
                if len(self._unknown) > NEGATIVE_CACHE_SIZE:
                    self._unknown.popitem(last=False)
        return record

    async def changed(self) -> None:
        """Called after this process changed a key: drop the cache here, tell everyone else."""
        self.epoch.bump()
        self._stamp = self.epoch.stamp()
        self.clear()
        if self.fanout is not None:
            await self.fanout.announce()  # one quick attempt; retries go on in the background

    async def start_fanout(self, redis_url: str | None) -> None:
        if not redis_url:
            return
        self.fanout = RedisFanout(redis_url, self.clear)
        self.fanout.start()

    async def close(self) -> None:
        if self.fanout is not None:
            await self.fanout.close()


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
    if not admin_token:
        raise AuthenticationFailed(
            "Unable to authenticate you: the management API is closed until the server is started "
            "with INFERGATE_ADMIN_TOKEN.",
            code="unauthorized",
        )
    if not secrets.compare_digest(token.encode(), admin_token.encode()):
        raise AuthenticationFailed(
            "Unable to authenticate you: this endpoint needs the admin token (INFERGATE_ADMIN_TOKEN); "
            "a model access key is not accepted here.",
            code="unauthorized",
        )
