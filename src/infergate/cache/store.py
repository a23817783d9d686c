"""KVStateStore: saved llama.cpp sequence states keyed by prompt prefix, with TTLs and a budget.

An entry lives until its TTL passes (each read refreshes it). The memory budget bounds the
sum of entry sizes; when it is exceeded, expired entries go first, then the least recently
used live ones. With a spill directory, evicted live entries are written to disk (within a
disk budget) and come back on the next read. The clock is injectable so tests never sleep.
Thread-safe: the engine's worker thread and the event loop may both touch it.
"""

from __future__ import annotations

import array
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Clock = Callable[[], float]


def prefix_key(model_id: str, tokens: Sequence[int]) -> str:
    """sha256 over the model id and the tokens as int32s (fast enough to try every stored length)."""
    digest = hashlib.sha256(model_id.encode())
    digest.update(b"\0")
    digest.update(array.array("i", tokens).tobytes())
    return digest.hexdigest()


@dataclass
class CacheEntry:
    key: str
    n_tokens: int
    ttl_seconds: float
    expires_at: float
    size: int
    state: bytes | bytearray | None  # None while spilled to disk


@dataclass
class StoreStats:
    entries: int
    tokens_in_memory: int
    bytes_in_memory: int
    bytes_on_disk: int
    hits: int
    misses: int
    evictions: int
    expirations: int


class KVStateStore:
    def __init__(
        self,
        memory_budget: int,
        spill_dir: Path | None = None,
        disk_budget: int = 0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.memory_budget = memory_budget
        self.spill_dir = spill_dir
        self.disk_budget = disk_budget if spill_dir else 0
        self.clock = clock
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()  # LRU order: oldest first
        self._lock = threading.RLock()
        self._memory = 0
        self._disk = 0
        self.hits = self.misses = self.evictions = self.expirations = 0
        self._pending: dict[str, threading.Event] = {}
        if spill_dir:
            spill_dir.mkdir(parents=True, exist_ok=True)
            for stale in spill_dir.glob("*.kv"):  # states from a previous process are not trusted
                stale.unlink(missing_ok=True)

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> CacheEntry | None:
        """The live entry with its state loaded, TTL refreshed; None when absent or expired."""
        with self._lock:
            entry = self._entries.get(key)
            now = self.clock()
            if entry is None or entry.expires_at <= now:
                if entry is not None:
                    self._drop(entry)
                    self.expirations += 1
                self.misses += 1
                return None
            if entry.state is None:
                try:
                    entry.state = self._load(entry)
                except OSError:  # the spill file is gone or unreadable: a miss, not a failure
                    self._drop(entry)
                    self.misses += 1
                    return None
                self._memory += entry.size
            entry.expires_at = now + entry.ttl_seconds
            self._entries.move_to_end(key)
            self.hits += 1
            self._enforce_budget(keep=key)
            return entry

    def contains(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.expires_at > self.clock()

    def touch(self, key: str) -> bool:
        """A read served without loading the state (the tokens were still in a KV slot): refresh
        the TTL and the LRU position. False when the entry is absent or expired."""
        with self._lock:
            entry = self._entries.get(key)
            now = self.clock()
            if entry is None or entry.expires_at <= now:
                return False
            entry.expires_at = now + entry.ttl_seconds
            self._entries.move_to_end(key)
            self.hits += 1
            return True

    def discard(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._drop(entry)

    def lengths(self) -> list[int]:
        """Distinct prefix lengths (tokens) of the live entries, longest first: what a prompt
        without breakpoints can look up."""
        with self._lock:
            now = self.clock()
            return sorted({e.n_tokens for e in self._entries.values() if e.expires_at > now}, reverse=True)

    # -- writes --------------------------------------------------------------------------------
    def put(self, key: str, state: bytes | bytearray, n_tokens: int, ttl_seconds: float) -> bool:
        """Store a state; an existing live entry keeps the longer of the two TTLs. False if it
        cannot fit the budget at all."""
        size = len(state)
        if size > self.memory_budget:
            return False
        with self._lock:
            now = self.clock()
            old = self._entries.get(key)
            if old is not None:
                ttl_seconds = max(ttl_seconds, old.ttl_seconds) if old.expires_at > now else ttl_seconds
                self._drop(old)
            entry = CacheEntry(key, n_tokens, ttl_seconds, now + ttl_seconds, size, state)
            self._entries[key] = entry
            self._memory += size
            self._enforce_budget(keep=key)
            return True

    def claim(self, key: str) -> bool:
        """Single flight: True for the first of concurrent writers of `key`; the others should
        `wait_for(key)` and then read, so identical concurrent requests create one entry."""
        with self._lock:
            if key in self._pending:
                return False
            self._pending[key] = threading.Event()
            return True

    def release(self, key: str) -> None:
        with self._lock:
            event = self._pending.pop(key, None)
        if event is not None:
            event.set()

    def wait_for(self, key: str, timeout: float = 60.0) -> None:
        with self._lock:
            event = self._pending.get(key)
        if event is not None:
            event.wait(timeout)

    # -- bookkeeping ---------------------------------------------------------------------------
    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                len(self._entries),
                sum(e.n_tokens for e in self._entries.values() if e.state is not None),
                self._memory,
                self._disk,
                self.hits,
                self.misses,
                self.evictions,
                self.expirations,
            )

    def purge_expired(self) -> int:
        with self._lock:
            now = self.clock()
            expired = [e for e in self._entries.values() if e.expires_at <= now]
            for entry in expired:
                self._drop(entry)
            self.expirations += len(expired)
            return len(expired)

    def _enforce_budget(self, keep: str) -> None:
        if self._memory <= self.memory_budget:
            return
        self.purge_expired()
        for entry in list(self._entries.values()):  # least recently used first
            if self._memory <= self.memory_budget:
                break
            if entry.key == keep or entry.state is None:
                continue
            if not self._spill(entry):
                self._drop(entry)
            self.evictions += 1

    def _drop(self, entry: CacheEntry) -> None:
        self._entries.pop(entry.key, None)
        if entry.state is not None:
            self._memory -= entry.size
        else:
            self._disk -= entry.size
            self._path(entry.key).unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        assert self.spill_dir is not None
        return self.spill_dir / f"{key}.kv"

    def _spill(self, entry: CacheEntry) -> bool:
        if not self.spill_dir or entry.state is None or self._disk + entry.size > self.disk_budget:
            return False
        tmp = self._path(entry.key).with_suffix(".tmp")
        try:
            tmp.write_bytes(entry.state)
            os.replace(tmp, self._path(entry.key))
        except OSError:  # disk full or gone: the entry is simply evicted
            tmp.unlink(missing_ok=True)
            return False
        entry.state = None
        self._memory -= entry.size
        self._disk += entry.size
        return True

    def _load(self, entry: CacheEntry) -> bytes | bytearray:
        path = self._path(entry.key)
        state = bytearray(path.read_bytes())
        path.unlink(missing_ok=True)
        self._disk -= entry.size
        return state
