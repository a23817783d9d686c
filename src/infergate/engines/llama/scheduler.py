"""Continuous-batching scheduler of the llama.cpp engine: one worker thread per model, while busy
(thread life in worker.py).

Requests (jobs, one sequence per choice) wait in a FIFO and are admitted into `parallel` KV
slots. Every step builds one llama_batch holding the next token of each decoding sequence plus
prompt chunks of newly admitted ones (decoders first, so a long prompt never stalls them for more
than one chunk), runs one llama_decode and samples every sequence that produced logits. Events go
back to each request's asyncio queue once per step. A finished slot keeps its KV cells, so a new
prompt of the same scope sharing a prefix (multi-turn chat) only evaluates the rest (slots.py);
a slot given to another prompt first saves its state, which the next prompt of its conversation
restores into whichever slot it gets (handover.py); with a `PrefixCache`, saved prefix states are
restored into a slot and breakpoint prefixes are saved as prefill reaches them (see prefix.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import replace

import llama_cpp as L
import numpy as np

from infergate.cache.handover import HandoverStore
from infergate.catalog import ModelSpec
from infergate.engines.llama.handover import Handover
from infergate.engines.llama.jobs import Cached, Delta, Done, Event, Failed, Job, Started
from infergate.engines.llama.model import N_BATCH, LoadedModel
from infergate.engines.llama.prefix import CacheUsage, PrefixCache, PrefixPlan
from infergate.engines.llama.prompt import prompt_tokens
from infergate.engines.llama.sampling import SamplingOptions, SeqSampler
from infergate.engines.llama.slots import Seq, Slot
from infergate.engines.llama.text import ChoiceText
from infergate.engines.llama.worker import OnDemandWorker
from infergate.errors import InfergateError, RateLimited, Unavailable

log = logging.getLogger("infergate.engines.llama.engine")


class Scheduler(OnDemandWorker):
    def __init__(
        self,
        spec: ModelSpec,
        threads: int,
        prefix: PrefixCache | None = None,
        handover: HandoverStore | None = None,
    ) -> None:
        super().__init__(f"llama:{spec.id}", spec.idle_unload)
        self.spec = spec
        self.threads = threads
        self.parallel = spec.parallel
        self.prefix = prefix
        # saves a slot's state when it is given to another prompt; places prompts in slots
        self.handover = Handover(handover, prefix)
        self._writing: set[str] = set()  # prefix keys that active sequences will save
        self._deferred: list[tuple[Job, int]] = []  # choices waiting for such a save (hold a slot)
        self._waiting: deque[Job] = deque()
        self._queued = 0  # sequences waiting for a slot
        self._running = 0  # sequences holding a slot
        self._model: LoadedModel | None = None
        self._slots: list[Slot] = []
        self._active: list[Seq] = []
        self._outbox: dict[Job, list[Event]] = {}
        self._seq_seconds = 2.0  # running mean of a sequence's lifetime, for Retry-After
        self.state = "not started"
        self.error: str | None = None
        self.generated_tokens = 0  # total sampled tokens (tests and metrics watch it)
        self.prompt_tokens_evaluated = 0  # prompt tokens run through llama_decode (not reused)
        self.loads = 0  # times the weights were loaded (start and reloads after idle unload)
        self.loaded = threading.Event()

    # ---- called from the event loop -------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closing:
                raise Unavailable(f"model '{self.spec.id}' is shutting down", headers={"Retry-After": "5"})
            if self._queued + self._running + job.n > self.parallel + self.spec.max_queue:
                backlog = (self._queued + self._running) / self.parallel
                retry = min(max(math.ceil(backlog * self._seq_seconds), 1), 600)
                raise RateLimited(
                    f"model '{self.spec.id}' is at capacity ({self._queued} requests waiting); retry later",
                    headers={"Retry-After": str(retry)},
                )
            self._waiting.append(job)
            self._queued += job.n
            self._wake()

    def cancel(self, job: Job) -> None:
        """Stop a job: queued choices are dropped now, running ones before the next decode step."""
        with self._cond:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                self._queued -= job.n - job.admitted
            self._cond.notify()

    @property
    def busy_sequences(self) -> int:
        return self._running

    # ---- worker thread ----------------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self._waiting or self._active or self._deferred)

    def _is_loaded(self) -> bool:
        return self._model is not None

    def _unload(self) -> None:
        self._free_model()
        self.state = "unloaded"

    def _crashed(self, error: BaseException) -> None:
        self._fail_all(InfergateError(f"the worker of model '{self.spec.id}' failed: {error}"))

    def _take_work(self) -> list[tuple[Job, int]]:
        """FIFO: hand free slots to the oldest waiting choices (caller holds the lock)."""
        picks: list[tuple[Job, int]] = []
        free = self.parallel - len(self._active) - len(self._deferred)
        while self._waiting and len(picks) < free:
            job = self._waiting[0]
            picks.append((job, job.admitted))
            job.admitted += 1
            self._queued -= 1
            self._running += 1
            if job.admitted == job.n:
                self._waiting.popleft()
        return picks

    def _do_work(self, picks: list[tuple[Job, int]]) -> None:
        """One step: admit the picked choices (and deferred ones), then decode."""
        admissions, self._deferred = self._deferred + picks, []
        if admissions:
            try:
                self._load()
            except Exception:
                for job, _index in admissions:
                    self._fail(job, Unavailable(f"model '{self.spec.id}' failed to load: {self.error}"))
                    self._release_running(1)
                self._flush()
                return
        for job, index in admissions:
            self._admit(job, index)
        for seq in [s for s in self._active if s.job.cancelled]:
            self._retire(seq)
        if self._active:
            self._step()
        self._flush()

    def _load(self) -> None:
        if self._model is not None:
            return
        if not self.spec.path:
            self.state, self.error = "failed", "no GGUF path configured"
            raise RuntimeError(self.error)
        # a reload after idle unload keeps the engine "ready": the request simply waits for it
        self.state = "loading" if self.state in ("not started", "loading", "failed") else "reloading"
        started = time.monotonic()
        try:
            self._model = LoadedModel(
                self.spec.path, self.spec.n_ctx, self.parallel, self.threads, self.spec.chat_template
            )
        except Exception as exc:
            self.state, self.error = "failed", str(exc)
            log.error("model '%s': %s", self.spec.id, exc)
            raise
        self._slots = [Slot(i) for i in range(self.parallel)]
        self.loads += 1
        self.state, self.error = "ready", None
        self.loaded.set()
        log.info(
            "model '%s' loaded in %.2f s (n_ctx %d per sequence, %d slots, %d threads)",
            self.spec.id,
            time.monotonic() - started,
            self._model.n_ctx_seq,
            self.parallel,
            self.threads,
        )

    def _admit(self, job: Job, index: int) -> None:
        model = self._model
        assert model is not None
        if job.cancelled:
            self._release_running(1)
            return
        try:
            if job.prompt is None:
                # rendered and tokenized once per job, cut at its cache_control breakpoints
                job.prompt, job.boundaries = prompt_tokens(
                    model, job.messages, job.cache_ttls, model.n_ctx_seq
                )
                self._emit(job, Started(len(job.prompt)))
        except Exception as exc:
            self._reject(job, exc)
            return
        prompt = job.prompt
        assert prompt is not None
        # the longest prefix of the prompt: in a free slot, or in a slot state saved at handover
        slot, slot_reuse, saved = self.handover.choose(self._slots, prompt, job.scope)
        plan: PrefixPlan | None = None
        if self.prefix is not None:
            plan = self.prefix.plan(
                prompt, job.boundaries, slot_reuse, job.explicit_cache, self._writing, job.scope
            )
            if plan is None:  # an identical prefix is being saved by another sequence: read it after
                self._deferred.append((job, index))
                return
        try:
            opts = job.sampling
            if opts.seed is not None and index:
                opts = SamplingOptions(**{**opts.__dict__, "seed": opts.seed + index})
            sampler = SeqSampler(model.vocab, model.n_vocab, opts, model.n_ctx_seq)
        except Exception as exc:
            self._reject(job, exc)
            return
        last = index == job.n - 1
        plan, n_past = self.handover.place(model, job, slot, slot_reuse, saved, plan, self._writing, last)
        slot.busy, slot.cached, slot.owner = True, [], job.scope
        room = model.n_ctx_seq - len(prompt)
        max_new = room if job.max_tokens is None else min(job.max_tokens, room)
        out = ChoiceText(job.stop, job.sampling.logprobs)
        seq = Seq(job, index, slot, sampler, list(prompt), n_past, max_new, time.monotonic(), out)
        if plan is not None:
            seq.writes = list(plan.writes)
            self._writing.update(w.key for w in plan.writes)
        if job.cache_usage is None:
            explicit = plan is not None and job.explicit_cache
            job.cache_usage = plan.usage if explicit and plan is not None else CacheUsage(read=n_past)
            seq.accounting = True
            seq.cache_done = CacheUsage(read=job.cache_usage.read)  # writes count once done
            self._emit(job, Cached(replace(seq.cache_done)))
        self._active.append(seq)
        self._save_due(seq)

    def _reject(self, job: Job, error: Exception) -> None:
        """A choice that cannot start (bad prompt or sampling options) fails its job."""
        self._fail(job, error)
        self._release_running(1)

    def _save_due(self, seq: Seq) -> None:
        """Save the breakpoint prefixes the sequence has just reached."""
        model, prefix = self._model, self.prefix
        while seq.writes and seq.writes[0].n_tokens == seq.n_past:
            assert model is not None and prefix is not None
            write = seq.writes.pop(0)
            self._writing.discard(write.key)
            usage, done = seq.job.cache_usage, seq.cache_done
            saved = prefix.save(model.ctx, seq.slot.seq_id, write)
            if not saved and seq.accounting and usage is not None:
                usage.add_write(write.ttl, -write.billed)  # not cached after all: billed as input
            elif saved and done is not None:  # a write done is billed even if the request ends now
                done.add_write(write.ttl, write.billed)
                self._emit(seq.job, Cached(replace(done)))

    def _step(self) -> None:
        model = self._model
        assert model is not None
        batch = model.batch
        tok = np.ctypeslib.as_array(batch.token, shape=(N_BATCH,))
        pos = np.ctypeslib.as_array(batch.pos, shape=(N_BATCH,))
        want = np.ctypeslib.as_array(batch.logits, shape=(N_BATCH,))
        n = 0
        fed: list[tuple[Seq, int, int]] = []  # (sequence, tokens fed, logits index or -1)
        decoding = [s for s in self._active if len(s.tokens) - s.n_past == 1]
        prefilling = [s for s in self._active if len(s.tokens) - s.n_past > 1]
        for seq in decoding + prefilling:
            take = min(len(seq.tokens) - seq.n_past, N_BATCH - n)
            if seq.writes:  # stop the chunk at the next breakpoint, whose state is saved then
                take = min(take, seq.writes[0].n_tokens - seq.n_past)
            if take <= 0:
                break
            tok[n : n + take] = seq.tokens[seq.n_past : seq.n_past + take]
            pos[n : n + take] = np.arange(seq.n_past, seq.n_past + take)
            want[n : n + take] = 0
            for j in range(n, n + take):
                batch.seq_id[j][0] = seq.slot.seq_id
                batch.n_seq_id[j] = 1
            done = seq.n_past + take == len(seq.tokens)
            if done:
                want[n + take - 1] = 1
            fed.append((seq, take, n + take - 1 if done else -1))
            n += take
        batch.n_tokens = n
        rc = L.llama_decode(model.ctx, batch)
        if rc != 0:
            err = InfergateError(f"llama_decode failed with status {rc}")
            for seq, _take, _idx in fed:  # their KV state is unknown now: forget it
                seq.n_past = model.drop_kv(seq.slot.seq_id, 0)
            for seq, _take, _idx in fed:
                self._fail(seq.job, err)
            return
        for seq, take, idx in fed:
            prompt = seq.job.prompt
            if prompt is not None and seq.n_past < len(prompt):
                self.prompt_tokens_evaluated += min(take, len(prompt) - seq.n_past)
            seq.n_past += take
            if seq.writes:
                self._save_due(seq)
            if idx >= 0:
                if seq.accounting and seq.job.cache_usage is not None:
                    seq.accounting = False
                    self._emit(seq.job, Cached(replace(seq.job.cache_usage)))
                token = seq.sampler.sample(model.ctx, idx)
                self._on_token(seq, token, idx)

    def _on_token(self, seq: Seq, token: int, idx: int) -> None:
        model = self._model
        assert model is not None
        self.generated_tokens += 1
        if model.is_eog(token):
            self._finish(seq, "stop")
            return
        seq.tokens.append(token)
        seq.n_gen += 1
        piece = model.piece(token)
        opts = seq.job.sampling
        logprob = model.logprob_entry(idx, token, opts.top_logprobs) if opts.logprobs else None
        if seq.out.add(piece, logprob):
            self._finish(seq, "stop")
        elif seq.n_gen >= seq.max_new:
            self._finish(seq, "length")
        else:
            self._send_text(seq)

    def _send_text(self, seq: Seq, final: bool = False) -> None:
        """Text ready to go and the tokens generated since the last Delta (even if held back)."""
        out = seq.out.take(final)
        new = seq.n_gen - seq.reported
        if out is not None or new:
            seq.reported = seq.n_gen
            text, logprobs = out if out is not None else ("", None)
            self._emit(seq.job, Delta(seq.index, text, logprobs, new))

    def _finish(self, seq: Seq, reason: str) -> None:
        self._send_text(seq, final=True)
        self._emit(seq.job, Done(seq.index, reason, seq.n_gen))
        elapsed = time.monotonic() - seq.started
        self._seq_seconds = 0.9 * self._seq_seconds + 0.1 * elapsed
        self._retire(seq)

    def _retire(self, seq: Seq) -> None:
        self._writing.difference_update(w.key for w in seq.writes)
        seq.sampler.close()
        seq.slot.cached = seq.tokens[: seq.n_past]
        seq.slot.busy = False
        self._active.remove(seq)
        self._release_running(1)

    def _release_running(self, count: int) -> None:
        with self._cond:
            self._running -= count

    def _emit(self, job: Job, event: Event) -> None:
        self._outbox.setdefault(job, []).append(event)

    def _fail(self, job: Job, error: Exception) -> None:
        if not job.cancelled:
            self._emit(job, Failed(error))
        with self._cond:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                self._queued -= job.n - job.admitted
        for seq in [s for s in self._active if s.job is job]:
            self._retire(seq)
        deferred = [(j, i) for j, i in self._deferred if j is not job]
        if len(deferred) < len(self._deferred):
            self._release_running(len(self._deferred) - len(deferred))
            self._deferred = deferred

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for job, events in outbox.items():
            try:
                job.deliver(events)
            except Exception:  # the request's event loop is gone
                job.cancelled = True

    def _free_model(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None
            self.loaded.clear()

    def _fail_all(self, error: Exception) -> None:
        for seq in list(self._active):
            self._fail(seq.job, error)
        for job, _index in list(self._deferred):
            self._fail(job, error)
        with self._cond:
            waiting = list(self._waiting)
        for job in waiting:
            self._fail(job, error)
        self._flush()

    def _shutdown(self) -> None:
        self._fail_all(Unavailable(f"model '{self.spec.id}' is shutting down", headers={"Retry-After": "5"}))
        self._free_model()
        self.state = "closed"
