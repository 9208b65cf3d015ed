"""The parse cache: bounded by entries and by weight, least recently used out first."""

from __future__ import annotations

import threading

from proxy.engine.parsecache import ParseCache


def test_weight_bounds_what_is_kept() -> None:
    cache: ParseCache[str] = ParseCache(entries=100, weight=80)
    for key in "abcd":
        cache.put(key, key.upper(), 10)
    assert cache.get("a") == ("A", 10)  # now the most recently used
    for key in "efghij":
        cache.put(key, key.upper(), 10)
    assert cache.weight == 80 and len(cache) == 8
    assert cache.get("b") is None and cache.get("c") is None
    assert cache.get("a") == ("A", 10)


def test_an_entry_heavier_than_an_eighth_is_not_kept() -> None:
    cache: ParseCache[str] = ParseCache(entries=100, weight=80)
    cache.put("big", "B", 11)
    assert cache.get("big") is None and cache.weight == 0


def test_entries_bound_what_is_kept() -> None:
    cache: ParseCache[int] = ParseCache(entries=3, weight=1000)
    for number in range(5):
        cache.put(str(number), number, 1)
    assert [cache.get(str(n)) for n in range(5)] == [None, None, (2, 1), (3, 1), (4, 1)]


def test_threads_share_it() -> None:
    cache: ParseCache[int] = ParseCache(entries=50, weight=10_000)

    def work(offset: int) -> None:
        for number in range(2000):
            key = str((number * 7 + offset) % 120)
            if cache.get(key) is None:
                cache.put(key, number, 3)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) <= 50 and cache.weight == 3 * len(cache)
