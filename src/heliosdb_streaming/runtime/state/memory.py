"""In-memory keyed state: a dict per transformation per task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class MemoryStateStore:
    """The ``memory`` state backend. Snapshots are plain copies of the dict."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        if not prefix:
            yield from list(self._data.items())
            return
        for key, value in list(self._data.items()):
            if key.startswith(prefix):
                yield key, value

    def to_dict(self) -> dict[str, Any]:
        """A shallow copy of every item (for snapshots; fast, unlike ``dict(items())``)."""
        return dict(self._data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryStateStore:
        """A store holding ``data`` (adopted, not copied)."""
        store = cls()
        store._data = data
        return store

    def __len__(self) -> int:
        return len(self._data)
