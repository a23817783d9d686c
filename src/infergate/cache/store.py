"""KVStateStore: saved llama.cpp sequence states keyed by prompt prefix, with TTLs and a budget.

An entry lives until its TTL passes (each read refreshes it). The memory budget bounds the
sum of entry sizes; when it is exceeded, expired entries go first, then the least recently
used live ones. With a spill directory, evicted live entries are written to disk (within a
disk budget; when it is full, the least recently used spilled entries make room) and come back
on the next read. The clock is injectable so tests never sleep.

Thread-safe: the engine's worker thread and the event loop (`stats()` for /metrics) may both
touch it. The lock guards only the bookkeeping; spill files are written, read and deleted
outside it, so a slow disk never stalls a reader of `stats()`. An entry being written out keeps
its state in memory until the file is complete (a read meanwhile takes it back).
"""

from __future__ import annotations

import array
import hashlib
import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Clock = Callable[[], float]


def prefix_key(model_id: str, tokens: Sequence[int], scope: str = "") -> str:
    """sha256 over the model id, the cache scope (who may read it) and the tokens as int32s (fast
    enough to try every stored length)."""
    digest = hashlib.sha256(model_id.encode())
    digest.update(b"\0" + scope.encode() + b"\0")
    digest.update(array.array("i", tokens).tobytes())
    return digest.hexdigest()


@dataclass(eq=False)
class CacheEntry:
    key: str
    n_tokens: int
    ttl_seconds: float
    expires_at: float
    size: int
    state: bytes | bytearray | None  # None while spilled to disk
    file: Path | None = None  # its spill file, while spilled or being spilled
    spilling: bool = False  # being written out: counted on disk, state still readable


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
        self._lock = threading.Lock()
        self._memory = 0
        self._disk = 0
        self._serial = itertools.count()  # spill file names are never reused
        self._trash: list[Path] = []  # spill files to delete once the lock is released
        self.hits = self.misses = self.evictions = self.expirations = 0
        if spill_dir:
            spill_dir.mkdir(parents=True, exist_ok=True)
            for stale in spill_dir.glob("*.kv"):  # states from a previous process are not trusted
                stale.unlink(missing_ok=True)

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> CacheEntry | None:
        """The live entry with its state loaded, TTL refreshed; None when absent or expired."""
        with self._lock:
            entry = self._live(key)
            path = None
            if entry is not None and entry.state is None:
                path = entry.file
        if entry is None:
            return self._miss()
        data = None
        if path is not None:  # spilled: read it back without the lock
            try:
                data = bytearray(path.read_bytes())
            except OSError:  # the spill file is gone or unreadable: a miss, not a failure
                data = None
        with self._lock:
            if self._entries.get(key) is not entry:  # dropped or replaced while it was read
                found = None
            elif entry.state is None and data is None:
                self._drop(entry)
                found = None
            else:
                if entry.state is None:
                    assert data is not None
                    self._to_memory(entry, data)
                elif entry.spilling:  # being written out: keep it in memory after all
                    self._to_memory(entry, entry.state)
                entry.expires_at = self.clock() + entry.ttl_seconds
                self._entries.move_to_end(key)
                self.hits += 1
                found = entry
            spills = self._enforce_budget(keep=key) if found is not None else []
        self._write_spills(spills)
        return found if found is not None else self._miss()

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
        self._empty_trash()

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
            spills = self._enforce_budget(keep=key)
        self._write_spills(spills)
        return True

    # -- bookkeeping ---------------------------------------------------------------------------
    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                len(self._entries),
                sum(e.n_tokens for e in self._entries.values() if e.state is not None and not e.spilling),
                self._memory,
                self._disk,
                self.hits,
                self.misses,
                self.evictions,
                self.expirations,
            )

    def purge_expired(self) -> int:
        with self._lock:
            count = self._purge_expired()
        self._empty_trash()
        return count

    def _miss(self) -> None:
        with self._lock:
            self.misses += 1
        self._empty_trash()

    def _live(self, key: str) -> CacheEntry | None:
        """The entry if present and not expired; an expired one is dropped (lock held)."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= self.clock():
            self._drop(entry)
            self.expirations += 1
            return None
        return entry

    def _purge_expired(self) -> int:
        now = self.clock()
        expired = [e for e in self._entries.values() if e.expires_at <= now]
        for entry in expired:
            self._drop(entry)
        self.expirations += len(expired)
        return len(expired)

    def _enforce_budget(self, keep: str) -> list[CacheEntry]:
        """Bring memory within budget (lock held): the entries to write out, after the lock."""
        if self._memory <= self.memory_budget:
            return []
        self._purge_expired()
        spills: list[CacheEntry] = []
        for entry in list(self._entries.values()):  # least recently used first
            if self._memory <= self.memory_budget:
                break
            if entry.key == keep or entry.state is None or entry.spilling:
                continue
            if self._make_disk_room(entry):
                entry.spilling, entry.file = True, self._new_file(entry.key)
                self._memory -= entry.size
                self._disk += entry.size
                spills.append(entry)
            else:
                self._drop(entry)
            self.evictions += 1
        return spills

    def _make_disk_room(self, entry: CacheEntry) -> bool:
        """Room on disk for `entry`, by dropping spilled entries used less recently than it (lock
        held). False when it cannot fit: the entry itself is then the one to forget."""
        if not self.spill_dir or entry.size > self.disk_budget:
            return False
        older: list[CacheEntry] = []
        for other in self._entries.values():
            if other is entry:
                break
            if other.state is None or other.spilling:
                older.append(other)
        for other in older:
            if self._disk + entry.size <= self.disk_budget:
                break
            self._drop(other)
            self.evictions += 1
        return self._disk + entry.size <= self.disk_budget

    def _new_file(self, key: str) -> Path:
        assert self.spill_dir is not None
        return self.spill_dir / f"{key}-{next(self._serial)}.kv"

    def _to_memory(self, entry: CacheEntry, state: bytes | bytearray) -> None:
        if entry.file is not None:
            self._trash.append(entry.file)
        entry.state, entry.file, entry.spilling = state, None, False
        self._disk -= entry.size
        self._memory += entry.size

    def _drop(self, entry: CacheEntry) -> None:
        self._entries.pop(entry.key, None)
        if entry.state is not None and not entry.spilling:
            self._memory -= entry.size
        else:
            self._disk -= entry.size
        if entry.file is not None:
            self._trash.append(entry.file)
            entry.file = None
        entry.spilling = False

    def _write_spills(self, spills: list[CacheEntry]) -> None:
        """Write evicted states to their files (lock not held); an entry read back or dropped
        meanwhile loses its file instead."""
        for entry in spills:
            path, state = entry.file, entry.state
            ok = path is not None and state is not None and self._write_file(path, state)
            with self._lock:
                if entry.spilling and entry.file == path:
                    if ok:
                        entry.state, entry.spilling = None, False
                    else:  # disk full or gone: the entry is simply evicted
                        self._drop(entry)
                elif ok and path is not None:
                    self._trash.append(path)
        self._empty_trash()

    def _write_file(self, path: Path, state: bytes | bytearray) -> bool:
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(state)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        return True

    def _empty_trash(self) -> None:
        with self._lock:
            trash, self._trash = self._trash, []
        for path in trash:
            path.unlink(missing_ok=True)
