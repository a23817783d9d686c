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


def pick_slot(slots: list[Slot], prompt: list[int], scope: str) -> tuple[Slot, int]:
    """The free slot holding the longest prefix of `prompt` that `scope` may reuse, and its
    length; another scope's cells count as nothing (a miss, not a hit)."""
    return max(
        ((s, common_prefix(s.cached, prompt) if s.owner == scope else 0) for s in slots if not s.busy),
        key=lambda sc: sc[1],
    )
