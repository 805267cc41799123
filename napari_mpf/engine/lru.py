"""The engine's one cache: least recently used entries, bounded in number, safe across threads.

The engine's caches (SLIC results, pairs of a data set, tiles of a lazy prediction, open zarr
arrays, decoded image planes) have keys that are not the function's arguments (an image's digest,
a dask block id) or values that must not be shared (a copy is returned), so
:func:`functools.lru_cache` does not fit them; they all use :class:`LRUCache`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

V = TypeVar("V")


class LRUCache(Generic[V]):
    """At most ``maxsize`` entries (none with ``maxsize`` 0); the least recently used goes first.

    Every operation holds a lock, but :meth:`get_or_compute` computes a missing value outside it:
    a slow load does not hold up other threads, and two threads that miss the same key both compute
    it (the later one's value is kept).
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(0, int(maxsize))
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        """The value of ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: V) -> None:
        """Keep ``value`` for ``key``, dropping the least recently used entries beyond ``maxsize``."""
        if not self.maxsize:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value of ``key``; on a miss ``compute()`` it (outside the lock) and keep it."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items
