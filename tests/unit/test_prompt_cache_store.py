"""KVStateStore TTLs, LRU eviction within a memory budget and disk spill, on a fake clock."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from infergate.cache.plan import PromptCachePlan, split_prefix_tokens
from infergate.cache.store import KVStateStore, prefix_key
from infergate.catalog import ModelSpec
from infergate.engines.llama.engine import prompt_cache_store
from infergate.errors import InvalidRequest
from infergate.schemas.chat import ChatCompletionRequest


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entry_expires_at_its_ttl_and_a_read_refreshes_it() -> None:
    clock = FakeClock()
    store = KVStateStore(memory_budget=1000, clock=clock)
    store.put("a", b"x" * 10, n_tokens=5, ttl_seconds=300)
    clock.now += 299
    assert store.get("a") is not None  # read at 299 s: refreshed to 300 s from now
    clock.now += 299
    assert store.get("a") is not None
    clock.now += 300
    assert store.get("a") is None
    assert store.stats().expirations == 1 and store.stats().bytes_in_memory == 0


def test_least_recently_used_live_entry_is_evicted_first() -> None:
    clock = FakeClock()
    store = KVStateStore(memory_budget=30, clock=clock)
    for key in "abc":
        store.put(key, b"x" * 10, 5, 300)
    store.get("a")  # b is now the least recently used
    store.put("d", b"x" * 10, 5, 300)
    assert store.contains("a") and not store.contains("b") and store.contains("c") and store.contains("d")
    assert store.stats().evictions == 1


def test_expired_entries_go_before_live_ones() -> None:
    clock = FakeClock()
    store = KVStateStore(memory_budget=30, clock=clock)
    store.put("old-but-long", b"x" * 10, 5, 3600)
    store.put("short", b"x" * 10, 5, 300)
    store.put("c", b"x" * 10, 5, 3600)
    clock.now += 301  # "short" has expired; "old-but-long" is least recently used but live
    store.put("d", b"x" * 10, 5, 300)
    assert store.contains("old-but-long") and not store.contains("short")


def test_spill_to_disk_and_back(tmp_path: Path) -> None:
    clock = FakeClock()
    store = KVStateStore(memory_budget=20, spill_dir=tmp_path, disk_budget=100, clock=clock)
    store.put("a", b"A" * 10, 5, 300)
    store.put("b", b"B" * 10, 5, 300)
    store.put("c", b"C" * 10, 5, 300)  # "a" spills
    assert store.stats().bytes_on_disk == 10 and (tmp_path / f"{'a'}.kv").exists()
    entry = store.get("a")
    assert entry is not None and entry.state == b"A" * 10
    assert store.stats().bytes_in_memory <= 20


def test_state_larger_than_budget_is_refused() -> None:
    store = KVStateStore(memory_budget=5, clock=FakeClock())
    assert not store.put("big", b"x" * 6, 3, 300)
    assert not store.contains("big")


def test_rewrite_keeps_the_longer_ttl() -> None:
    clock = FakeClock()
    store = KVStateStore(memory_budget=100, clock=clock)
    store.put("a", b"x", 1, 3600)
    store.put("a", b"x", 1, 300)
    clock.now += 1000
    assert store.contains("a")


def test_single_flight_claims_once() -> None:
    store = KVStateStore(memory_budget=100, clock=FakeClock())
    assert store.claim("k") and not store.claim("k")
    waited = threading.Event()

    def waiter() -> None:
        store.wait_for("k", timeout=5)
        waited.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    store.put("k", b"x", 1, 300)
    store.release("k")
    thread.join(5)
    assert waited.is_set() and store.claim("k")


def test_prefix_key_depends_on_model_and_tokens() -> None:
    assert prefix_key("m", [1, 2]) != prefix_key("m", [1, 2, 3]) != prefix_key("n", [1, 2])
    assert prefix_key("m", [1, 2]) == prefix_key("m", [1, 2])


def _request(messages: list[dict]) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})


def test_plan_reads_the_seeds_three_forms() -> None:
    plan = PromptCachePlan.from_messages(
        _request(
            [
                {
                    "role": "user",
                    "content": {
                        "type": "text",
                        "text": "a",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    },
                },
                {
                    "role": "developer",
                    "content": [
                        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "5m"}},
                        {"type": "text", "text": "c"},
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "t",
                    "content": [{"type": "text", "text": "d", "cache_control": {"type": "ephemeral"}}],
                },
                {"role": "user", "content": "plain"},
            ]
        ).messages
    )
    assert [(b.message_index, b.part_index, b.ttl) for b in plan.breakpoints] == [
        (0, 0, "1h"),
        (1, 0, "5m"),
        (2, 0, "5m"),
    ]
    assert plan.explicit


def test_plan_refuses_a_fifth_breakpoint() -> None:
    part = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    with pytest.raises(InvalidRequest) as info:
        PromptCachePlan.from_messages(_request([{"role": "user", "content": [part] * 5}]).messages)
    assert info.value.param == "messages.0.content.4.cache_control"


def test_written_tokens_per_ttl() -> None:
    assert split_prefix_tokens([100, 150], ["1h", "5m"], read_upto=0) == {"1h": 100, "5m": 50}
    assert split_prefix_tokens([100, 150], ["1h", "5m"], read_upto=100) == {"1h": 0, "5m": 50}
    assert split_prefix_tokens([100], ["5m"], read_upto=100) == {"1h": 0, "5m": 0}


def test_touch_refreshes_without_loading_and_lengths_lists_live_prefixes() -> None:
    clock = FakeClock()
    store = KVStateStore(memory_budget=1000, clock=clock)
    store.put("short", b"s" * 10, n_tokens=5, ttl_seconds=300)
    store.put("long", b"l" * 10, n_tokens=50, ttl_seconds=300)
    store.put("same", b"m" * 10, n_tokens=50, ttl_seconds=3600)
    assert store.lengths() == [50, 5]
    clock.now += 200
    assert store.touch("short")  # read at 200 s: lives until 500 s
    clock.now += 200
    assert store.contains("short") and not store.contains("long")
    assert store.lengths() == [50, 5]  # "same" (1 h) still has 50 tokens
    assert not store.touch("long") and not store.touch("absent")
    store.discard("same")
    assert store.lengths() == [5]
    assert store.stats().tokens_in_memory == 5 + 50  # "long" expired but not yet purged


def test_a_lost_spill_file_is_a_miss(tmp_path: Path) -> None:
    clock = FakeClock()
    store = KVStateStore(memory_budget=15, spill_dir=tmp_path, disk_budget=100, clock=clock)
    store.put("a", b"a" * 10, n_tokens=5, ttl_seconds=300)
    store.put("b", b"b" * 10, n_tokens=5, ttl_seconds=300)  # "a" goes to disk
    (tmp_path / "a.kv").unlink()
    assert store.get("a") is None
    assert store.stats().bytes_on_disk == 0 and store.stats().entries == 1


def test_each_server_process_spills_to_its_own_folder(tmp_path: Path) -> None:
    dead = tmp_path / "prompt-cache" / "m" / "999999999"
    dead.mkdir(parents=True)
    (dead / "x.kv").write_bytes(b"old")
    store = prompt_cache_store(ModelSpec(id="m", backend="llama_cpp", path="/x.gguf"), tmp_path)
    assert store.spill_dir == tmp_path / "prompt-cache" / "m" / str(os.getpid())
    assert store.spill_dir.is_dir() and not dead.exists()
