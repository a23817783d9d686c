"""Local chat models served with llama.cpp (llama-cpp-python's low-level API).

`LlamaCppEngine` turns a validated chat request into a scheduler job (see scheduler.py: one
worker thread per model, continuous batching over `spec.parallel` KV slots) and renders the
job's events as an OpenAI chat.completion or as chat.completion.chunk dicts. Nothing here blocks
the event loop: all llama.cpp calls run on the model's worker thread. As events arrive, the
request's live `context.usage` is kept current, so a request cut short is billed for what it used.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp as L

from infergate.cache.handover import HandoverStore
from infergate.cache.store import Clock, KVStateStore, StoreStats
from infergate.catalog import ModelSpec
from infergate.engines.base import ChatEngine, ChatRequest, ChatResult, RequestContext
from infergate.engines.llama.jobs import Cached, Delta, Done, Event, Failed, Job, Started
from infergate.engines.llama.prefix import CacheUsage, PrefixCache
from infergate.engines.llama.prompt import ToolPlan, chat_messages, parse_tool_call, plan_tools
from infergate.engines.llama.sampling import JSON_OBJECT_GBNF, SamplingOptions, schema_grammar
from infergate.engines.llama.scheduler import Scheduler
from infergate.observability import watch_prompt_cache
from infergate.schemas.chat import ChatCompletionRequest
from infergate.usage import Usage

_READINESS = {"not started": "model not started", "loading": "model is loading", "closed": "engine closed"}


def _fingerprint(spec: ModelSpec) -> str:
    """Changes when the weights file or the llama.cpp build changes, like OpenAI's."""
    ident = f"{spec.id}|{L.__version__}"
    if spec.path:
        try:
            st = os.stat(spec.path)
            ident += f"|{os.path.basename(spec.path)}|{st.st_size}|{int(st.st_mtime)}"
        except OSError:
            pass
    return "fp_" + hashlib.sha256(ident.encode()).hexdigest()[:10]


def _grammar(params: ChatCompletionRequest, plan: ToolPlan) -> tuple[str | None, list[str] | None]:
    """Which grammar constrains the reply: a forced tool call, then response_format, then auto tools."""
    if plan.mode == "required":
        return plan.grammar, None
    fmt = params.response_format
    if fmt is not None and fmt.type == "json_object":
        return JSON_OBJECT_GBNF, None
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        schema = fmt.json_schema.schema_
        return (JSON_OBJECT_GBNF if schema is None else schema_grammar(schema)), None
    if plan.mode == "auto":
        return plan.grammar, plan.triggers
    return None, None


@dataclass
class _Choice:
    """What the stream renderer knows about one choice so far."""

    mode: str  # "text": stream deltas; "hold": buffer (may be a tool call); "undecided" (auto tools)
    held: list[str] = field(default_factory=list)
    held_lp: list[dict[str, Any]] = field(default_factory=list)


def prompt_cache_store(spec: ModelSpec, data_dir: Path | None, clock: Clock = time.monotonic) -> KVStateStore:
    """The model's saved-prefix store: `prompt_cache_mb` in memory, spilling up to
    `prompt_cache_disk_mb` to `<data dir>/prompt-cache/<model id>/<pid>/` (one folder per server
    process: `--workers N` processes share the data dir but not their stores)."""
    spill_dir = None
    if data_dir is not None and spec.prompt_cache_disk_mb > 0:
        model_dir = data_dir / "prompt-cache" / re.sub(r"[^A-Za-z0-9._-]", "_", spec.id)
        remove_dead_spill_dirs(model_dir)
        spill_dir = model_dir / str(os.getpid())
    return KVStateStore(
        memory_budget=int(spec.prompt_cache_mb * 2**20),
        spill_dir=spill_dir,
        disk_budget=int(spec.prompt_cache_disk_mb * 2**20),
        clock=clock,
    )


def remove_dead_spill_dirs(model_dir: Path) -> None:
    """Spill folders of processes that are gone (a crash or a restart leaves them behind)."""
    if not model_dir.is_dir():
        return
    for folder in model_dir.iterdir():
        if folder.name.isdigit() and int(folder.name) != os.getpid() and not _alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def cache_scope(spec: ModelSpec, context: RequestContext) -> str:
    """Whose cached prefixes a request may reuse: its key's only, unless the cache is global."""
    return "*" if spec.prompt_cache_scope == "global" else f"key:{context.key_uuid or ''}"


def _account(usage: Usage, events: list[Event]) -> None:
    """Add what the events report to the request's live usage."""
    for ev in events:
        if isinstance(ev, Delta):
            usage.output_tokens += ev.tokens
        elif isinstance(ev, Started):
            usage.input_tokens = ev.prompt_tokens
        elif isinstance(ev, Cached):
            usage.cache_read_tokens = ev.usage.read
            usage.cache_write_5m_tokens = ev.usage.write_5m
            usage.cache_write_1h_tokens = ev.usage.write_1h


def _drain(queue: asyncio.Queue[list[Event]], usage: Usage) -> None:
    """Account events delivered but not read (the request ends early)."""
    while not queue.empty():
        _account(usage, queue.get_nowait())


def _usage(prompt_tokens: int, done: dict[int, Done], cache: CacheUsage | None, explicit: bool) -> Usage:
    cache = cache or CacheUsage()
    return Usage(
        input_tokens=prompt_tokens,
        output_tokens=sum(d.output_tokens for d in done.values()),
        cache_read_tokens=cache.read,
        cache_write_5m_tokens=cache.write_5m,
        cache_write_1h_tokens=cache.write_1h,
        cache_control=explicit,
    )


class LlamaCppEngine(ChatEngine):
    """A GGUF chat model. API: start(), close(), readiness(), complete(), stream()."""

    live_usage = True  # request.context.usage is kept current as the prompt and the output run

    def __init__(self, spec: ModelSpec, data_dir: Path | None = None, clock: Clock = time.monotonic) -> None:
        super().__init__(spec, data_dir)
        self.threads = spec.threads or os.cpu_count() or 1
        self.prompt_cache: PrefixCache | None = None
        if spec.prompt_cache_mb > 0:
            self.prompt_cache = PrefixCache(spec.id, prompt_cache_store(spec, data_dir, clock))
        # states of slots handed to another prompt (handover.py): a store apart from the
        # breakpoint prefixes, so that this churn never evicts a cache write a client paid for
        self.slot_cache = HandoverStore(int(spec.slot_cache_mb * 2**20)) if spec.slot_cache_mb > 0 else None
        self.scheduler = Scheduler(spec, self.threads, self.prompt_cache, self.slot_cache)
        self.system_fingerprint = _fingerprint(spec)
        self._started = False

    async def start(self) -> None:
        """Load the weights on the model's worker thread; a failure is reported by readiness()."""
        if self._started:
            return
        self._started = True
        if self.prompt_cache is not None or self.slot_cache is not None:
            watch_prompt_cache(self.spec.id, self._cache_stats)
        self.scheduler.start()
        await asyncio.to_thread(self.scheduler.first_load.wait)

    def _cache_stats(self) -> StoreStats:
        """The saved KV states of both stores, for /metrics."""
        stats = self.prompt_cache.store.stats() if self.prompt_cache else StoreStats(0, 0, 0, 0, 0, 0, 0, 0)
        if self.slot_cache is not None:
            slots = self.slot_cache.stats()
            stats.entries += slots.entries
            stats.tokens_in_memory += slots.tokens
            stats.bytes_in_memory += slots.bytes_in_memory
        return stats

    async def close(self) -> None:
        if self._started:
            await asyncio.to_thread(self.scheduler.close)

    def readiness(self) -> str | None:
        state = self.scheduler.state
        if state in ("ready", "unloaded", "reloading"):  # idle-unloaded models reload on demand
            return None
        if state == "failed":
            return f"model failed to load: {self.scheduler.error}"
        return _READINESS.get(state, state)

    def _submit(self, request: ChatRequest) -> tuple[Job, asyncio.Queue[list[Event]], ToolPlan]:
        params = request.params
        plan = plan_tools(params)
        grammar, triggers = _grammar(params, plan)
        stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
        sampling = SamplingOptions(
            temperature=1.0 if params.temperature is None else params.temperature,
            top_p=1.0 if params.top_p is None else params.top_p,
            seed=params.seed,
            presence_penalty=params.presence_penalty or 0.0,
            frequency_penalty=params.frequency_penalty or 0.0,
            logit_bias={int(k): v for k, v in (params.logit_bias or {}).items()},  # ids checked by the schema
            grammar=grammar,
            lazy_triggers=triggers,
            logprobs=bool(params.logprobs),
            top_logprobs=params.top_logprobs or 0,
        )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[Event]] = asyncio.Queue()

        def deliver(events: list[Event]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, events)

        breakpoints = request.cache_plan.breakpoints
        request.context.usage.cache_control = bool(breakpoints)
        job = Job(
            messages=chat_messages(params, plan, breakpoints),
            n=params.n,
            max_tokens=params.output_limit,
            stop=[s for s in stop if s],
            sampling=sampling,
            deliver=deliver,
            cache_ttls=[bp.ttl for bp in breakpoints],
            scope=cache_scope(self.spec, request.context),
        )
        self.scheduler.submit(job)
        return job, queue, plan

    def _tool_call(self, text: str, plan: ToolPlan) -> dict[str, Any] | None:
        if plan.mode == "none":
            return None
        call = parse_tool_call(text, plan)
        if call is None:
            return None
        return {
            "id": "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": call[0], "arguments": call[1]},
        }

    async def complete(self, request: ChatRequest) -> ChatResult:
        job, queue, plan = self._submit(request)
        n = job.n
        texts: list[list[str]] = [[] for _ in range(n)]
        lps: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        done: dict[int, Done] = {}
        prompt_tokens = 0
        cache: CacheUsage | None = None
        live = request.context.usage
        try:
            while len(done) < n:
                events = await queue.get()
                _account(live, events)
                for ev in events:
                    if isinstance(ev, Delta):
                        texts[ev.index].append(ev.text)
                        if ev.logprobs:
                            lps[ev.index].extend(ev.logprobs)
                    elif isinstance(ev, Cached):
                        cache = ev.usage
                    elif isinstance(ev, Started):
                        prompt_tokens = ev.prompt_tokens
                    elif isinstance(ev, Done):
                        done[ev.index] = ev
                    elif isinstance(ev, Failed):
                        raise ev.error
        finally:
            if len(done) < n:  # cancelled (client gone) or failed: free the slots now
                self.scheduler.cancel(job)
                _drain(queue, live)
        choices = []
        for i in range(n):
            text, finish = "".join(texts[i]), done[i].finish_reason
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            call = self._tool_call(text, plan)
            if call is not None:
                message["content"], message["tool_calls"], finish = None, [call], "tool_calls"
            logprobs = {"content": lps[i], "refusal": None} if job.sampling.logprobs else None
            choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
        body = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.spec.id,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": self.system_fingerprint,
        }
        return ChatResult(body=body, usage=_usage(prompt_tokens, done, cache, job.explicit_cache))

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any] | Usage]:
        job, queue, plan = self._submit(request)
        cid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        want_lp = job.sampling.logprobs
        initial = {"none": "text", "auto": "undecided", "required": "hold"}[plan.mode]
        states = [_Choice(initial) for _ in range(job.n)]
        done: dict[int, Done] = {}
        prompt_tokens = 0
        cache: CacheUsage | None = None
        live = request.context.usage

        def chunk(
            index: int,
            delta: dict[str, Any],
            finish: str | None = None,
            logprobs: list[dict[str, Any]] | None = None,
        ) -> dict[str, Any]:
            lp = {"content": logprobs, "refusal": None} if want_lp and logprobs is not None else None
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.spec.id,
                "service_tier": None,
                "system_fingerprint": self.system_fingerprint,
                "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}],
            }

        try:
            while len(done) < job.n:
                out: list[dict[str, Any]] = []
                events = await queue.get()
                _account(live, events)
                for ev in events:
                    if isinstance(ev, Delta):
                        if ev.text:
                            out.extend(self._stream_delta(states[ev.index], ev, chunk))
                    elif isinstance(ev, Cached):
                        cache = ev.usage
                    elif isinstance(ev, Started):
                        prompt_tokens = ev.prompt_tokens
                        out.extend(
                            chunk(i, {"role": "assistant", "content": "", "refusal": None})
                            for i in range(job.n)
                        )
                    elif isinstance(ev, Done):
                        done[ev.index] = ev
                        out.extend(self._stream_finish(states[ev.index], ev, plan, chunk))
                    elif isinstance(ev, Failed):
                        raise ev.error
                for item in out:
                    yield item
        finally:
            if len(done) < job.n:
                self.scheduler.cancel(job)
                _drain(queue, live)
        yield _usage(prompt_tokens, done, cache, job.explicit_cache)

    @staticmethod
    def _stream_delta(state: _Choice, ev: Delta, chunk: Any) -> list[dict[str, Any]]:
        if state.mode == "text":
            return [chunk(ev.index, {"content": ev.text}, None, ev.logprobs)]
        state.held.append(ev.text)
        state.held_lp.extend(ev.logprobs or [])
        if state.mode == "undecided":  # auto tools: a reply opening like a tool call is held back
            head = "".join(state.held).lstrip()
            if not head:
                return []
            if head.startswith("{") or head.startswith("<tool_call>") or "<tool_call>".startswith(head):
                state.mode = "hold" if head[0] == "{" or head.startswith("<tool_call>") else "undecided"
                return []
            state.mode = "text"
            text, lps = "".join(state.held), state.held_lp
            state.held, state.held_lp = [], []
            return [chunk(ev.index, {"content": text}, None, lps)]
        return []

    def _stream_finish(self, state: _Choice, ev: Done, plan: ToolPlan, chunk: Any) -> list[dict[str, Any]]:
        out = []
        finish = ev.finish_reason
        if state.mode != "text" and state.held:
            text = "".join(state.held)
            call = self._tool_call(text, plan)
            if call is not None:
                out.append(chunk(ev.index, {"tool_calls": [{"index": 0, **call}]}))
                finish = "tool_calls"
            else:
                out.append(chunk(ev.index, {"content": text}, None, state.held_lp))
        out.append(chunk(ev.index, {}, finish))
        return out
