"""Parsed statements kept by their text, shared by the event loop and the planner's
threads.

Entries are weighed by their tokens: a parse keeps a few objects alive per token, and
every full garbage collection walks them all while no session is answered, so the cache
is bounded by what it keeps, not by how many statements.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class ParseCache(Generic[V]):
    """Least recently used out first, once ``entries`` or ``weight`` is exceeded; an
    entry heavier than ``weight // 8`` is not kept at all."""

    def __init__(self, entries: int, weight: int) -> None:
        self.max_entries = entries
        self.max_weight = weight
        self.weight = 0
        self._entries: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> tuple[V, int] | None:
        """The value and its weight, or None when it is not kept."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, value: V, weight: int) -> None:
        if weight > self.max_weight // 8:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (value, weight)
            self.weight += weight
            while len(self._entries) > self.max_entries or self.weight > self.max_weight:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.weight -= dropped
