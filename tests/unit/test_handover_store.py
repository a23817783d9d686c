"""HandoverStore on its own: longest-common-prefix lookup, scopes, superseding and the budget."""

from __future__ import annotations

import threading

import numpy as np

from infergate.cache.handover import HandoverStore, common_prefix


def state(n_bytes: int) -> bytearray:
    return bytearray(n_bytes)


def test_common_prefix() -> None:
    a = np.array([1, 2, 3, 4], dtype=np.int32)
    assert common_prefix(a, np.array([1, 2, 9], dtype=np.int32)) == 2
    assert common_prefix(a, np.array([1, 2, 3, 4, 5], dtype=np.int32)) == 4
    assert common_prefix(a, np.array([], dtype=np.int32)) == 0
    assert common_prefix(a, np.array([7], dtype=np.int32)) == 0


def test_best_is_the_longest_common_prefix_of_the_same_scope() -> None:
    store = HandoverStore(10_000)
    store.put([1, 2, 3, 4, 5], "key:a", state(100))
    store.put([1, 2, 7, 8], "key:a", state(100))
    store.put([1, 2, 3, 4, 5, 6, 7], "key:b", state(100))
    entry, n = store.best([1, 2, 3, 4, 9], "key:a")
    assert entry is not None and n == 4 and list(entry.tokens) == [1, 2, 3, 4, 5]
    entry, n = store.best([1, 2, 7, 8, 9], "key:a")
    assert entry is not None and n == 4 and list(entry.tokens) == [1, 2, 7, 8]
    # key:c has nothing, whatever the others hold
    assert store.best([1, 2, 3, 4, 5, 6, 7], "key:c") == (None, 0)
    assert store.best([9, 9], "key:a") == (None, 0)


def test_a_longer_state_of_the_same_conversation_supersedes_the_older_one() -> None:
    store = HandoverStore(10_000)
    store.put([1, 2, 3], "key:a", state(100))
    store.put([1, 2, 3], "key:b", state(100))  # another scope: never touched by key:a's saves
    store.put([1, 2, 3, 4, 5], "key:a", state(150))
    stats = store.stats()
    assert stats.entries == 2 and stats.tokens == 3 + 5
    assert store.covers(np.array([1, 2, 3, 4], dtype=np.int32), "key:a")
    assert not store.covers(np.array([1, 2, 3, 4], dtype=np.int32), "key:b")
    assert not store.covers(np.array([1, 2, 3, 4, 5, 6], dtype=np.int32), "key:a")


def test_the_budget_evicts_the_least_recently_saved_and_refuses_what_never_fits() -> None:
    store = HandoverStore(1000)  # each entry: 300 bytes of state + its tokens
    for first in range(4):
        assert store.put([first, 100, 101], "s", state(300))
    stats = store.stats()
    assert stats.entries == 3 and stats.evictions == 1 and stats.bytes_in_memory <= 1000
    assert store.best([0, 100, 101], "s") == (None, 0)  # the oldest went first
    assert store.best([3, 100, 101], "s")[1] == 3
    assert not store.put([5], "s", state(2000))
    assert store.stats().entries == 3


def test_a_restored_entry_is_taken_out_only_when_the_slot_holds_it_whole() -> None:
    store = HandoverStore(10_000)
    store.put([1, 2, 3, 4], "s", state(100))
    entry, _ = store.best([1, 2, 3, 4, 5], "s")
    assert entry is not None
    store.used(entry, whole=False)
    assert store.stats().entries == 1
    store.used(entry, whole=True)
    assert store.stats().entries == 0 and store.stats().restores == 2
    store.discard(entry)  # already gone: nothing happens
    assert store.stats().bytes_in_memory == 0


def test_concurrent_readers_and_writers_keep_the_books_straight() -> None:
    store = HandoverStore(50_000)

    def writer(base: int) -> None:
        for i in range(200):
            store.put([base, i, i + 1], f"s{base % 2}", state(500))
            store.best([base, i], f"s{base % 2}")
            store.stats()

    threads = [threading.Thread(target=writer, args=(b,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = store.stats()
    assert stats.bytes_in_memory <= 50_000
    assert stats.bytes_in_memory == sum(len(e.state) + e.tokens.nbytes for e in store._entries.values())
