"""One key group's view of a stage task's state store: every key is prefixed by the group.

A later stage's task owns a range of key groups but opens one store per step (not one per group:
128 RocksDB instances would be absurd); the group prefix keeps each group's state contiguous and
separable, so a rescale can move whole groups from one task's snapshot to another's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from heliosdb_streaming.runtime.contracts import StateStore


def group_prefix(group: int) -> str:
    """The prefix of key group ``group``'s entries (fixed width: groups sort in order)."""
    return f"g{group:05d}|"


class KeyGroupStore:
    """The entries of ``group`` in ``store``, under their own keys (the ``StateStore`` contract)."""

    __slots__ = ("_prefix", "_store")

    def __init__(self, store: StateStore, group: int) -> None:
        self._store = store
        self._prefix = group_prefix(group)

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(self._prefix + key, default)

    def put(self, key: str, value: Any) -> None:
        self._store.put(self._prefix + key, value)

    def delete(self, key: str) -> None:
        self._store.delete(self._prefix + key)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        cut = len(self._prefix)
        for key, value in self._store.items(self._prefix + prefix):
            yield key[cut:], value
