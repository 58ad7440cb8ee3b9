"""A write-back cache over a task's state store, for steps that touch the same keys again and again.

A process function reads and writes its keys' state on every event; against RocksDB each access is
an encode, a decode and a read or write of the database. The cache keeps recently used values and
buffers writes (the last write of a key wins) until :meth:`WriteBackCache.write_back`: before each
checkpoint snapshots the store (the step's ``before_snapshot``), at the end of input, and whenever
``max_entries`` keys are cached. So the store holds everything a snapshot needs when it is taken, the
cache itself is never snapshotted, and a key written on every event costs one database write per
checkpoint interval (as Quix Streams' transaction cache), not one per event.

Values are the ones the caller put: callers (``runtime/state/keyed.py``) copy values in and out, so a
cached value is never changed in place. ``items`` writes back first, then reads the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from heliosdb_streaming.runtime.contracts import StateStore

MISSING: Any = object()
"""What ``lookup`` gives for a key it does not hold (not cached, or known to be absent)."""
DEFAULT_MAX_ENTRIES = 100_000


class WriteBackCache:
    """A ``StateStore`` caching reads and buffering writes of another one; see the module docstring."""

    __slots__ = ("_cache", "_deletes", "_max", "_puts", "_store", "_write_batch")

    def __init__(self, store: StateStore, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._store = store
        self._max = max_entries
        self._cache: dict[str, Any] = {}  # key -> value, or MISSING when known to be absent
        self._puts: dict[str, Any] = {}
        self._deletes: set[str] = set()
        self._write_batch = getattr(store, "write_batch", None)

    @property
    def store(self) -> StateStore:
        return self._store

    def lookup(self) -> Callable[[str, Any], Any]:
        """``get`` of the cached values, for hot paths: the default they pass (``MISSING``) when the
        key is not cached or known absent; ``get`` then says which."""
        return self._cache.get

    def get(self, key: str, default: Any = None) -> Any:
        value = self._cache.get(key, MISSING)
        if value is MISSING:
            if key in self._cache:
                return default  # known absent
            if len(self._cache) >= self._max:
                self._forget()
            value = self._cache[key] = self._store.get(key, MISSING)
            if value is MISSING:
                return default
        return value

    def _forget(self) -> None:
        """Bounds the memory: writes back, then drops every cached value (hot keys come back)."""
        self.write_back()
        self._cache.clear()

    def put(self, key: str, value: Any) -> None:
        cache = self._cache
        if key not in cache and len(cache) >= self._max:
            self._forget()
        cache[key] = value
        self._puts[key] = value
        if self._deletes:
            self._deletes.discard(key)

    def delete(self, key: str) -> None:
        if len(self._cache) >= self._max and key not in self._cache:
            self._forget()
        self._cache[key] = MISSING
        self._puts.pop(key, None)
        self._deletes.add(key)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        self.write_back()
        return self._store.items(prefix)

    def write_back(self) -> None:
        """Hands every buffered write to the store (in one write batch when the store has them)."""
        if not self._puts and not self._deletes:
            return
        puts, deletes = self._puts, self._deletes
        self._puts, self._deletes = {}, set()
        if self._write_batch is not None:
            self._write_batch(puts, deletes)
            return
        for key, value in puts.items():
            self._store.put(key, value)
        for key in deletes:
            self._store.delete(key)
