"""Prompt caching for the llama.cpp engine: breakpoints in the prompt, saved KV states, billing.

A `cache_control` breakpoint is carried through the chat template as a mark after the marked
part's text (`prompt.breakpoint_mark`); the rendered prompt is cut at the marks and tokenized piece by
piece, so a breakpoint falls on an exact token boundary. The KV state of a sequence holding
exactly the prompt up to a boundary is saved in a `KVStateStore` under a hash of those tokens
and the request's cache scope (its key, unless `prompt_cache_scope = "global"`); a later prompt
of the same scope starting with the same tokens restores it into its slot and evaluates only the
rest. Another key's prompt never reads it: no `cached_tokens`, no faster first token.

Billing (`PrefixPlan.usage`): with breakpoints, the longest breakpoint prefix found in the store
is a read and every later breakpoint writes the tokens since the previous one, as the seed and
Anthropic count them. Without breakpoints, whatever was reused (still in the slot from an earlier
request, or restored from the store) is a read and nothing is written.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llama_cpp as L

from infergate.cache.plan import TTL_SECONDS, Ttl
from infergate.cache.store import CacheEntry, KVStateStore, prefix_key

if TYPE_CHECKING:
    from infergate.engines.llama.model import LoadedModel

log = logging.getLogger("infergate.engines.llama.engine")


@dataclass(slots=True)
class CacheUsage:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    def add_write(self, ttl: Ttl, tokens: int) -> None:
        if ttl == "1h":
            self.write_1h += tokens
        else:
            self.write_5m += tokens


@dataclass(frozen=True, slots=True)
class PrefixWrite:
    """A breakpoint prefix to save once the sequence holds exactly `n_tokens` prompt tokens."""

    n_tokens: int
    ttl: Ttl
    key: str
    billed: int  # tokens this write bills (those since the previous boundary or the read)


@dataclass(slots=True)
class PrefixPlan:
    restore: CacheEntry | None  # a saved state to load into the slot
    n_past: int  # prompt tokens the slot holds once the plan is applied
    writes: list[PrefixWrite] = field(default_factory=list)
    usage: CacheUsage = field(default_factory=CacheUsage)


class PrefixCache:
    """Plans reuse for one model's prompts and moves states between KV slots and the store.

    Used from the model's worker thread only (the store itself is thread-safe).
    """

    def __init__(self, model_id: str, store: KVStateStore) -> None:
        self.model_id = model_id
        self.store = store

    def key(self, prompt: Sequence[int], n_tokens: int, scope: str) -> str:
        return prefix_key(self.model_id, prompt[:n_tokens], scope)

    def plan(
        self,
        prompt: list[int],
        boundaries: list[tuple[int, Ttl]],
        slot_reuse: int,
        explicit: bool,
        writing: set[str],
        scope: str,
    ) -> PrefixPlan | None:
        """How to start `prompt` in a slot already holding its first `slot_reuse` tokens. Only
        entries written in the same `scope` (the key, or "" when the cache is global) are read.

        None means wait: another sequence is writing a prefix this one would write too (single
        flight: concurrent identical requests create an entry once, then read it).
        """
        limit = len(prompt) - 1  # the last prompt token is always evaluated, for its logits
        ttl_of: dict[int, Ttl] = {}
        for n, ttl in boundaries:
            if 0 < n <= limit and (ttl_of.get(n) != "1h"):
                ttl_of[n] = ttl
        keys = {n: self.key(prompt, n, scope) for n in ttl_of}
        store = self.store

        live: list[int] = []
        pending: list[int] = []
        if explicit:
            live = [n for n in sorted(ttl_of) if store.contains(keys[n])]
            read_upto = live[-1] if live else 0
            pending = [n for n in sorted(ttl_of) if n > read_upto]
            if any(keys[n] in writing for n in pending):
                return None

        restore: CacheEntry | None = None
        n_past = slot_reuse
        for n in sorted(set(ttl_of) | set(store.lengths()), reverse=True):
            if n <= slot_reuse:
                break
            if n > limit:
                continue
            key = keys.get(n) or self.key(prompt, n, scope)
            entry = store.get(key) if store.contains(key) else None
            if entry is not None:
                restore, n_past = entry, n
                break

        if not explicit:
            return PrefixPlan(restore, n_past, usage=CacheUsage(read=n_past))

        usage = CacheUsage()
        for n in live:
            if n <= n_past:
                usage.read = n
                if restore is None or restore.key != keys[n]:
                    store.touch(keys[n])  # a read refreshes the TTL
        writes: list[PrefixWrite] = []
        previous = usage.read
        for n in (n for n in sorted(ttl_of) if n > usage.read):
            writes.append(PrefixWrite(n, ttl_of[n], keys[n], n - previous))
            usage.add_write(ttl_of[n], n - previous)
            previous = n
        if writes:
            if restore is not None and writes[0].n_tokens <= slot_reuse:
                restore, n_past = None, slot_reuse  # the slot already holds all that can be kept
            n_past = min(n_past, writes[0].n_tokens)  # a saved state holds exactly its prefix
        return PrefixPlan(restore, n_past, writes, usage)

    def apply(
        self,
        model: LoadedModel,
        seq_id: int,
        plan: PrefixPlan,
        prompt: list[int],
        boundaries: list[tuple[int, Ttl]],
        explicit: bool,
        writing: set[str],
        scope: str,
    ) -> tuple[PrefixPlan, int]:
        """Make the sequence hold the prompt's first tokens as planned: (plan, tokens held). A
        saved state that will not load is dropped from the store and the plan made again for an
        empty sequence."""
        n_past = self._place(model, seq_id, plan)
        if n_past >= 0:
            return plan, n_past
        if plan.restore is not None:
            self.store.discard(plan.restore.key)
        retry = self.plan(prompt, boundaries, 0, explicit, writing, scope) or PrefixPlan(None, 0)
        n_past = self._place(model, seq_id, retry)
        return (retry, n_past) if n_past >= 0 else (PrefixPlan(None, 0), 0)

    @staticmethod
    def _place(model: LoadedModel, seq_id: int, plan: PrefixPlan) -> int:
        """Tokens the sequence holds after the plan, or -1 (sequence emptied) when its saved
        state could not be loaded."""
        if plan.restore is None:
            return model.drop_kv(seq_id, plan.n_past)
        model.drop_kv(seq_id, 0)
        if PrefixCache.restore_into(model.ctx, seq_id, plan.restore):
            if plan.n_past < plan.restore.n_tokens:
                return model.drop_kv(seq_id, plan.n_past)
            return plan.n_past
        log.warning("could not load a saved prompt state; dropping it")
        model.drop_kv(seq_id, 0)
        return -1

    def save(self, ctx: Any, seq_id: int, write: PrefixWrite) -> bool:
        """Copy the sequence's KV cells (exactly `write.n_tokens` of them) into the store."""
        data = read_seq_state(ctx, seq_id, self.store.memory_budget)
        if data is None:
            return False
        return self.store.put(write.key, data, write.n_tokens, TTL_SECONDS[write.ttl])

    @staticmethod
    def restore_into(ctx: Any, seq_id: int, entry: CacheEntry) -> bool:
        """Load a saved state into an empty sequence; False (sequence left empty) on failure."""
        return entry.state is not None and write_seq_state(ctx, seq_id, entry.state)


def read_seq_state(ctx: Any, seq_id: int, max_size: int) -> bytearray | None:
    """A copy of the sequence's KV cells (llama_state_seq_get_data); None when empty, larger than
    `max_size` or not readable."""
    size = int(L.llama_state_seq_get_size(ctx, seq_id))
    if size == 0 or size > max_size:
        return None
    data = bytearray(size)
    view = (ctypes.c_uint8 * size).from_buffer(data)
    written = int(L.llama_state_seq_get_data(ctx, view, size, seq_id))
    del view  # release the export before resizing
    if written == 0:
        return None
    del data[written:]
    return data


def write_seq_state(ctx: Any, seq_id: int, state: bytes | bytearray) -> bool:
    """Load a saved state into an empty sequence (llama_state_seq_set_data)."""
    size = len(state)
    if isinstance(state, bytearray):
        view = (ctypes.c_uint8 * size).from_buffer(state)
    else:
        view = (ctypes.c_uint8 * size).from_buffer_copy(state)
    loaded = int(L.llama_state_seq_set_data(ctx, view, size, seq_id))
    del view
    return loaded > 0
