"""The engine's one cache (napari_mpf.engine.lru): least recently used first out, thread safe."""

import threading

from napari_mpf.engine.lru import LRUCache


def test_the_least_recently_used_entry_goes_first():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    cache.put("a", 10)  # replacing counts as a use
    cache.put("d", 4)
    assert cache.get("a") == 10 and "c" not in cache
    cache.clear()
    assert len(cache) == 0 and cache.get("a", "none") == "none"


def test_size_zero_keeps_nothing():
    cache = LRUCache(0)
    calls = []
    for _ in range(3):
        assert cache.get_or_compute("k", lambda: calls.append(1) or 7) == 7
    assert len(calls) == 3 and len(cache) == 0


def test_get_or_compute_computes_a_key_once_while_it_is_kept():
    cache = LRUCache(4)
    calls = []
    for _ in range(5):
        assert cache.get_or_compute(("k", 1), lambda: calls.append(1) or "v") == "v"
    assert len(calls) == 1


def test_threads_share_one_cache_within_its_size():
    cache = LRUCache(8)
    errors = []
    barrier = threading.Barrier(8)

    def work(t):
        try:
            barrier.wait()
            for i in range(2000):
                key = (t * 7 + i) % 20
                value = cache.get_or_compute(key, lambda key=key: key * 2)
                assert value == key * 2
                cache.put(key, key * 2)
                assert len(cache) <= 8
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) == 8
