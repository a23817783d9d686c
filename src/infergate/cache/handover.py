"""HandoverStore: KV states of slots handed to another prompt, found by longest common prefix.

What llama.cpp's server keeps with `--cache-ram`. A KV slot holds the last sequence that ran in it
(a conversation so far); when the slot is given to another prompt, the scheduler saves that
state here, with its tokens and its cache scope. A later prompt of the same scope looks for the
entry sharing the longest token prefix with it, restores it into a slot and evaluates only the
rest, whichever slot it lands in and however many conversations came in between.

Unlike the breakpoint store (store.py: exact prefixes, TTLs, billed writes), entries here are
matched by common prefix, have no TTL and cost the client nothing: they live until the memory
budget needs room (least recently used first), until a longer state of the same conversation
supersedes them, or until their conversation takes them back into a slot.

Thread-safe: the model's worker thread reads and writes, /metrics reads `stats()`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two int32 token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


@dataclass(eq=False, slots=True)
class SlotState:
    tokens: np.ndarray  # int32: the tokens whose KV cells the state holds
    scope: str  # who may restore it (see engine.cache_scope)
    state: bytearray  # llama_state_seq_get_data output
    serial: int = 0  # identity inside the store

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def size(self) -> int:
        return len(self.state) + self.tokens.nbytes


@dataclass
class HandoverStats:
    entries: int
    tokens: int
    bytes_in_memory: int
    saves: int
    restores: int
    evictions: int


class HandoverStore:
    def __init__(self, memory_budget: int) -> None:
        self.memory_budget = memory_budget
        self._entries: OrderedDict[int, SlotState] = OrderedDict()  # LRU order: oldest first
        self._lock = threading.Lock()
        self._memory = 0
        self._serial = 0
        self.saves = self.restores = self.evictions = 0

    def best(self, prompt: Sequence[int] | np.ndarray, scope: str) -> tuple[SlotState | None, int]:
        """The entry of `scope` sharing the longest prefix with `prompt`, and that length.
        Another scope's entries are never considered (no read, no faster first token)."""
        tokens = np.asarray(prompt, dtype=np.int32)
        best: SlotState | None = None
        best_len = 0
        with self._lock:
            for entry in self._entries.values():
                if entry.scope != scope:
                    continue
                n = common_prefix(entry.tokens, tokens)
                if n > best_len:
                    best, best_len = entry, n
        return best, best_len

    def covers(self, tokens: np.ndarray, scope: str) -> bool:
        """An entry of `scope` already holds all of `tokens` (saving them again would add nothing)."""
        with self._lock:
            return any(
                e.scope == scope
                and e.n_tokens >= len(tokens)
                and common_prefix(e.tokens, tokens) == len(tokens)
                for e in self._entries.values()
            )

    def put(self, tokens: Sequence[int] | np.ndarray, scope: str, state: bytearray) -> bool:
        """Keep a slot's state. Entries of the same scope it extends are dropped (a conversation's
        older turn is superseded by its newer one); the least recently used entries make room.
        False when it cannot fit the budget at all."""
        entry = SlotState(np.array(tokens, dtype=np.int32), scope, state)
        if entry.size > self.memory_budget:
            return False
        with self._lock:
            for old in list(self._entries.values()):
                if (
                    old.scope == scope
                    and old.n_tokens <= entry.n_tokens
                    and common_prefix(old.tokens, entry.tokens) == old.n_tokens
                ):
                    self._drop(old)
            while self._entries and self._memory + entry.size > self.memory_budget:
                self._drop(next(iter(self._entries.values())))
                self.evictions += 1
            self._serial += 1
            entry.serial = self._serial
            self._entries[entry.serial] = entry
            self._memory += entry.size
            self.saves += 1
        return True

    def used(self, entry: SlotState, whole: bool) -> None:
        """`entry` was restored into a slot. Taken out of the store when the slot now holds all
        of it (it will be saved again, longer, when that slot is handed over); otherwise left in
        place (its own conversation may still want the tail) without refreshing its LRU position."""
        with self._lock:
            self.restores += 1
            if whole and self._entries.get(entry.serial) is entry:
                self._drop(entry)

    def discard(self, entry: SlotState) -> None:
        with self._lock:
            if self._entries.get(entry.serial) is entry:
                self._drop(entry)

    def stats(self) -> HandoverStats:
        with self._lock:
            return HandoverStats(
                len(self._entries),
                sum(e.n_tokens for e in self._entries.values()),
                self._memory,
                self.saves,
                self.restores,
                self.evictions,
            )

    def _drop(self, entry: SlotState) -> None:
        if self._entries.pop(entry.serial, None) is not None:
            self._memory -= entry.size
