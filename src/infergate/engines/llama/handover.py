"""Slot handover for the llama.cpp scheduler: conversations keep their computed prefix even when
more of them are active than there are KV slots (what llama.cpp's server does with `--cache-ram`).

When a free slot is given to a prompt that will not keep what the slot holds, the slot's
sequence state is first saved in the model's `HandoverStore` (cache/handover.py), under the cache
scope of the prompt that left it. A new prompt starts from the longest prefix it may reuse: the
common prefix with a free slot of its scope, or with a saved state of its scope, which is then
restored (llama_state_seq_set_data) into the free slot worth the least (empty, else least
recently used); only the rest of the prompt is evaluated. Breakpoint prefixes of the prompt
cache (prefix.py) are still consulted on top. Used from the model's worker thread only.
"""

from __future__ import annotations

import logging

import numpy as np

from infergate.cache.handover import HandoverStore, SlotState
from infergate.engines.llama.jobs import Job
from infergate.engines.llama.model import LoadedModel
from infergate.engines.llama.prefix import PrefixCache, PrefixPlan, read_seq_state, write_seq_state
from infergate.engines.llama.slots import Slot, pick_slot, victim_slot

log = logging.getLogger("infergate.engines.llama.engine")

# Fewer tokens than this are not worth a saved state, nor moving a prompt to another slot for:
# evaluating them costs about as much as copying a state, and every prompt of a chat template
# starts with the same few tokens.
MIN_TOKENS = 32


class Handover:
    """Places prompts in slots. Without a store (`slot_cache_mb = 0`) a slot's cells are reused
    only by a prompt that lands in that slot, as before."""

    def __init__(self, store: HandoverStore | None, prefix: PrefixCache | None) -> None:
        self.store = store
        self.prefix = prefix
        self._uses = 0  # counter behind Slot.last_used

    def choose(self, slots: list[Slot], prompt: list[int], scope: str) -> tuple[Slot, int, SlotState | None]:
        """(slot, tokens of `prompt` it can start with, saved state to restore into it or None).
        The last prompt token is always evaluated (for its logits), so at most len(prompt) - 1."""
        limit = len(prompt) - 1
        if self.store is None:
            slot, common = pick_slot(slots, prompt, scope)
            return slot, min(common, limit), None
        slot, common = pick_slot(slots, prompt, scope, MIN_TOKENS)
        reuse = min(common, limit)
        entry, lcp = self.store.best(prompt, scope)
        if entry is not None and min(lcp, limit) >= reuse + MIN_TOKENS:
            return victim_slot(slots), min(lcp, limit), entry
        return slot, reuse, None

    def place(
        self,
        model: LoadedModel,
        job: Job,
        slot: Slot,
        reuse: int,
        saved: SlotState | None,
        plan: PrefixPlan | None,
        writing: set[str],
        last_choice: bool = True,
    ) -> tuple[PrefixPlan | None, int]:
        """Make the slot hold the prompt's first tokens: its own first `reuse`, or `saved` cut to
        `reuse`, or what the prefix plan restores. What the slot held is handed over (saved)
        first. Returns the plan as carried out and the number of tokens the slot holds."""
        prompt = job.prompt
        assert prompt is not None
        self._uses += 1
        slot.last_used = self._uses
        restoring = plan is not None and plan.restore is not None
        if plan is not None:
            reuse = plan.n_past  # the plan may stop short, at a breakpoint it saves
        self.hand_over(model, slot, 0 if saved is not None or restoring else reuse)
        if saved is not None and not restoring:
            n_past = self.restore(model, slot.seq_id, saved, reuse, take=last_choice)
            if n_past >= 0:
                return plan, n_past
            reuse = 0  # it would not load: start from an empty slot
            if plan is not None and self.prefix is not None:
                args = (job.boundaries, 0, job.explicit_cache, writing, job.scope)
                plan = self.prefix.plan(prompt, *args) or PrefixPlan(None, 0)
        if self.prefix is None or plan is None:
            return plan, model.drop_kv(slot.seq_id, reuse)
        args = (job.boundaries, job.explicit_cache, writing, job.scope)
        return self.prefix.apply(model, slot.seq_id, plan, prompt, *args)

    def hand_over(self, model: LoadedModel, slot: Slot, keep: int) -> None:
        """The slot will keep only its first `keep` tokens: save its state first if what it
        loses is worth keeping and no saved state holds it already."""
        store = self.store
        if store is None or len(slot.cached) - keep < MIN_TOKENS:
            return
        tokens = np.asarray(slot.cached, dtype=np.int32)
        if store.covers(tokens, slot.owner):
            return
        state = read_seq_state(model.ctx, slot.seq_id, store.memory_budget)
        if state is not None:
            store.put(tokens, slot.owner, state)

    def restore(
        self, model: LoadedModel, seq_id: int, entry: SlotState, n_tokens: int, take: bool = True
    ) -> int:
        """Load `entry` into the sequence and keep its first `n_tokens`: the tokens it holds,
        or -1 (sequence emptied, entry dropped) when the state would not load. With `take`, an
        entry the slot now holds (nearly) all of is taken out of the store: it is saved again,
        longer, when the slot is handed over (other choices of the same request leave it)."""
        assert self.store is not None
        model.drop_kv(seq_id, 0)
        if not write_seq_state(model.ctx, seq_id, entry.state):
            log.warning("could not load a saved slot state; dropping it")
            model.drop_kv(seq_id, 0)
            self.store.discard(entry)
            return -1
        held = min(n_tokens, entry.n_tokens)
        if held < entry.n_tokens:
            held = model.drop_kv(seq_id, held)
        self.store.used(entry, whole=take and entry.n_tokens - held < MIN_TOKENS)
        return held
