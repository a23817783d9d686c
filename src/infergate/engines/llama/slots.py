"""KV slots of the llama.cpp scheduler and the sequences decoding in them.

A slot keeps the KV cells of its last prompt after the sequence ends, so a new prompt sharing a
prefix (multi-turn chat) only evaluates the rest. That reuse is scoped like the prompt cache: a
slot's cells are reused only for a job of the same scope (the same key, unless the cache is
global), so one key never gets a faster first token from another key's prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from infergate.engines.llama.jobs import Job
from infergate.engines.llama.prefix import CacheUsage, PrefixWrite
from infergate.engines.llama.sampling import SeqSampler
from infergate.engines.llama.text import ChoiceText


@dataclass(eq=False, slots=True)
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells the slot holds
    owner: str = ""  # scope of the job that left them
    busy: bool = False
    last_used: int = 0  # when it was last given to a sequence (a counter): the LRU slot goes first


@dataclass(eq=False, slots=True)
class Seq:
    job: Job
    index: int
    slot: Slot
    sampler: SeqSampler
    tokens: list[int]
    n_past: int
    max_new: int
    started: float
    out: ChoiceText
    n_gen: int = 0
    reported: int = 0  # output tokens already sent in a Delta
    writes: list[PrefixWrite] = field(default_factory=list)  # prefixes to save during prefill
    accounting: bool = False  # this choice reports the job's prompt-cache usage
    cache_done: CacheUsage | None = None  # what it has read and written so far (accounting only)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def pick_slot(slots: list[Slot], prompt: list[int], scope: str, min_reuse: int = 1) -> tuple[Slot, int]:
    """The free slot holding the longest prefix of `prompt` that `scope` may reuse, and its
    length; another scope's cells count as nothing (a miss, not a hit). A match shorter than
    `min_reuse` (every prompt shares the chat template's first tokens) counts as none, and among
    equals an empty slot, then the least recently used one, is taken: the slots whose contents
    are worth the least."""
    best: tuple[Slot, int] | None = None
    best_key: tuple[int, bool, int] | None = None
    for slot in slots:
        if slot.busy:
            continue
        common = common_prefix(slot.cached, prompt) if slot.owner == scope else 0
        key = (common if common >= min_reuse else 0, not slot.cached, -slot.last_used)
        if best_key is None or key > best_key:
            best, best_key = (slot, common), key
    assert best is not None, "no free slot"
    return best


def victim_slot(slots: list[Slot]) -> Slot:
    """The free slot whose contents are worth the least: an empty one, else the least recently used."""
    return min((s for s in slots if not s.busy), key=lambda s: (bool(s.cached), s.last_used))
