"""KVStateStore TTLs, LRU eviction within a memory budget and disk spill, on a fake clock."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from infergate.cache.plan import PromptCachePlan
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
    assert store.stats().bytes_on_disk == 10 and len(list(tmp_path.glob("a-*.kv"))) == 1
    entry = store.get("a")
    assert entry is not None and entry.state == b"A" * 10
    assert store.stats().bytes_in_memory <= 20
    assert not list(tmp_path.glob("a-*.kv"))  # read back: its file is gone


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


def test_prefix_key_depends_on_model_scope_and_tokens() -> None:
    assert prefix_key("m", [1, 2]) != prefix_key("m", [1, 2, 3]) != prefix_key("n", [1, 2])
    assert prefix_key("m", [1, 2]) == prefix_key("m", [1, 2])
    assert prefix_key("m", [1, 2], "key:a") != prefix_key("m", [1, 2], "key:b") != prefix_key("m", [1, 2])


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
    (spilled,) = tmp_path.glob("a-*.kv")
    spilled.unlink()
    assert store.get("a") is None
    assert store.stats().bytes_on_disk == 0 and store.stats().entries == 1


def test_each_server_process_spills_to_its_own_folder(tmp_path: Path) -> None:
    dead = tmp_path / "prompt-cache" / "m" / "999999999"
    dead.mkdir(parents=True)
    (dead / "x.kv").write_bytes(b"old")
    store = prompt_cache_store(ModelSpec(id="m", backend="llama_cpp", path="/x.gguf"), tmp_path)
    assert store.spill_dir == tmp_path / "prompt-cache" / "m" / str(os.getpid())
    assert store.spill_dir.is_dir() and not dead.exists()


def test_a_full_disk_tier_evicts_its_least_recently_used_entries(tmp_path: Path) -> None:
    clock = FakeClock()
    store = KVStateStore(memory_budget=10, spill_dir=tmp_path, disk_budget=20, clock=clock)
    for key in "abcd":  # each put pushes the previous entry to disk
        store.put(key, key.encode() * 10, 5, 300)
    # the disk holds two: "a" (least recently used) made room for "c", the freshest spill
    assert not store.contains("a") and store.contains("b") and store.contains("c")
    assert store.stats().bytes_on_disk == 20 and len(list(tmp_path.glob("*.kv"))) == 2
    assert store.touch("b")  # "b" is now used more recently than "c"
    store.put("e", b"e" * 10, 5, 300)  # "d" spills: "c" goes, "b" stays
    assert store.contains("b") and not store.contains("c") and store.contains("d")
    entry = store.get("b")
    assert entry is not None and entry.state == b"b" * 10
    assert {p.name.split("-")[0] for p in tmp_path.glob("*.kv")} == {"d", "e"}


def test_an_entry_older_than_the_whole_disk_tier_is_dropped_not_spilled(tmp_path: Path) -> None:
    clock = FakeClock()
    store = KVStateStore(memory_budget=20, spill_dir=tmp_path, disk_budget=10, clock=clock)
    store.put("a", b"a" * 10, 5, 300)
    store.put("b", b"b" * 10, 5, 300)
    store.put("c", b"c" * 10, 5, 300)  # "a" spills
    assert store.touch("a")  # "a" on disk is now fresher than "b" in memory
    store.put("d", b"d" * 10, 5, 300)  # "b" must go: the disk keeps the fresher "a"
    assert store.contains("a") and not store.contains("b")


class BlockedSpill(KVStateStore):
    """A real store whose spill writes wait for the test: a disk that is slow right now."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.writing = threading.Event()
        self.go_on = threading.Event()

    def _write_file(self, path: Path, state: bytes | bytearray) -> bool:
        if not self.writing.is_set():  # only the first write is slow
            self.writing.set()
            assert self.go_on.wait(10)
        return super()._write_file(path, state)


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def test_stats_and_reads_do_not_wait_for_a_spill_write(tmp_path: Path) -> None:
    store = BlockedSpill(memory_budget=20, spill_dir=tmp_path, disk_budget=100, clock=FakeClock())
    store.put("a", b"a" * 10, 5, 300)
    store.put("b", b"b" * 10, 5, 300)
    writer, _ = _in_thread(lambda: store.put("c", b"c" * 10, 5, 300))  # "a" spills, slowly
    try:
        assert store.writing.wait(10)
        reader, stats = _in_thread(store.stats)
        reader.join(5)  # a deadline, not a pause: returns at once unless stats() waits on the write
        assert not reader.is_alive(), "stats() waited for a spill write"
        assert stats[0].bytes_on_disk == 10 and stats[0].bytes_in_memory == 20  # type: ignore[attr-defined]
        got, entries = _in_thread(lambda: store.get("b"))
        got.join(5)
        assert not got.is_alive() and entries[0] is not None
    finally:
        store.go_on.set()
        writer.join(10)
    assert not writer.is_alive() and store.stats().bytes_on_disk == 10
    entry = store.get("a")  # the spilled state comes back whole
    assert entry is not None and entry.state == b"a" * 10


def test_an_entry_read_while_being_spilled_stays_in_memory(tmp_path: Path) -> None:
    store = BlockedSpill(memory_budget=20, spill_dir=tmp_path, disk_budget=100, clock=FakeClock())
    store.put("a", b"a" * 10, 5, 300)
    store.put("b", b"b" * 10, 5, 300)
    writer, _ = _in_thread(lambda: store.put("c", b"c" * 10, 5, 300))
    try:
        assert store.writing.wait(10)
        entry = store.get("a")  # taken back before its file is complete
        assert entry is not None and entry.state == b"a" * 10
    finally:
        store.go_on.set()
        writer.join(10)
    entry = store.get("a")
    assert entry is not None and entry.state == b"a" * 10
    stats = store.stats()
    assert stats.bytes_on_disk == len(list(tmp_path.glob("*.kv"))) * 10  # no file left behind
    assert stats.bytes_in_memory + stats.bytes_on_disk == 30
