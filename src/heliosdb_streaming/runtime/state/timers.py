"""Timers of a keyed process function: per key, per time domain, fired in time order, checkpointed.

Every timer is one store entry ``t|<domain>|<time>|<k>`` -> ``[key]`` (``<domain>`` is ``e`` or
``p``, ``<k>`` the key's canonical JSON as in :mod:`keyed`), so registering the same (key, time)
twice keeps one timer, a checkpoint of the store captures the timers, and a timer moves with its key
on a rescale. In memory each domain keeps a heap of ``(time, k)`` with lazy deletion: a deleted timer
stays in the heap until it surfaces and is skipped because its entry is gone from ``live``. The heaps
are derived and rebuilt from the store by :meth:`TimerQueue.restore`.

Timers due at the same time fire in the order of their key's canonical JSON: deterministic, so a run
restored from a checkpoint emits what an uninterrupted one does.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from heliosdb_streaming.runtime.contracts import StateStore

EVENT = "e"
PROCESSING = "p"


def _check_time(timestamp: Any) -> int:
    if type(timestamp) is not int:
        if isinstance(timestamp, float) and timestamp.is_integer():
            return int(timestamp)
        raise TypeError(f"timer time must be epoch milliseconds (int), got {timestamp!r}")
    return timestamp


class TimerQueue:
    """The timers of one time domain."""

    __slots__ = ("_live", "_prefix", "_store", "domain", "heap")

    def __init__(self, store: StateStore, domain: str) -> None:
        self._store = store
        self.domain = domain
        self._prefix = f"t|{domain}|"
        self.heap: list[tuple[int, str]] = []
        self._live: dict[tuple[int, str], Any] = {}

    def restore(self) -> None:
        """Rebuilds the heap from the store (after a restore, or at start)."""
        self._live = {}
        n = len(self._prefix)
        for sk, entry in self._store.items(self._prefix):
            ts, kstr = sk[n:].split("|", 1)
            self._live[(int(ts), kstr)] = entry[0]
        self.heap = list(self._live)
        heapq.heapify(self.heap)

    def register(self, timestamp: Any, key: Any, kstr: str) -> None:
        ts = _check_time(timestamp)
        item = (ts, kstr)
        if item in self._live:
            return
        self._live[item] = key
        heapq.heappush(self.heap, item)
        self._store.put(f"{self._prefix}{ts}|{kstr}", [key])

    def delete(self, timestamp: Any, kstr: str) -> None:
        ts = _check_time(timestamp)
        item = (ts, kstr)
        if item in self._live:
            del self._live[item]  # its heap entry is skipped when it surfaces
            self._store.delete(f"{self._prefix}{ts}|{kstr}")

    def next_time(self) -> int | None:
        """The time of the earliest pending timer, or ``None``."""
        heap = self.heap
        while heap and heap[0] not in self._live:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, until: int) -> tuple[int, Any, str] | None:
        """Removes and returns the earliest timer at or before ``until`` as (time, key, k), or ``None``.

        One at a time, so that timers registered while one fires are seen by the next call.
        """
        heap = self.heap
        live = self._live
        while heap and heap[0][0] <= until:
            item = heapq.heappop(heap)
            if item not in live:
                continue  # deleted (or already fired) while it was in the heap
            key = live.pop(item)
            self._store.delete(f"{self._prefix}{item[0]}|{item[1]}")
            return item[0], key, item[1]
        return None

    def pending(self) -> Iterator[tuple[int, Any]]:
        """The pending timers as (time, key), in firing order (for tests and inspection)."""
        for ts, kstr in sorted(self._live):
            yield ts, self._live[(ts, kstr)]

    def __len__(self) -> int:
        return len(self._live)
