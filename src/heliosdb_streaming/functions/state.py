"""State handles: values a keyed process function keeps per key, checkpointed with its task.

Every handle is scoped to the key of the event (or timer) being processed, as Flink's keyed state:
``count.value()`` in ``process`` reads the count of ``ctx.key`` only. Values are JSON-compatible
(``None``, ``bool``, ``int``, ``float``, ``str``, lists and dicts with string keys) because state
lives in the job's state backend (memory or RocksDB) and in its checkpoints, which store JSON. A value
read from state is the handle's own copy: change it and ``update``/``put`` it to keep the change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

JsonValue = Any
"""A JSON-compatible value (``None``, bool, int, float, str, list, dict with str keys)."""

MapKey = str | int | float | bool | None
"""A key of a :class:`MapState`: a JSON scalar."""


class ValueState(ABC):
    """One value per key (Flink's ``ValueState``)."""

    @abstractmethod
    def value(self) -> JsonValue:
        """The value of the current key, or the state's ``default`` if it has none."""

    @abstractmethod
    def update(self, value: JsonValue) -> None:
        """Sets the value of the current key (``None`` clears it)."""

    @abstractmethod
    def clear(self) -> None:
        """Removes the value of the current key."""


class MapState(ABC):
    """A map per key (Flink's ``MapState``); each entry is stored on its own, so maps may be large."""

    @abstractmethod
    def get(self, key: MapKey, default: JsonValue = None) -> JsonValue:
        """The value under ``key`` in the current key's map, or ``default``."""

    @abstractmethod
    def put(self, key: MapKey, value: JsonValue) -> None:
        """Sets ``key`` to ``value`` in the current key's map."""

    @abstractmethod
    def remove(self, key: MapKey) -> None:
        """Removes ``key`` from the current key's map (no error if absent)."""

    @abstractmethod
    def contains(self, key: MapKey) -> bool:
        """Whether the current key's map holds ``key``."""

    @abstractmethod
    def keys(self) -> Iterator[MapKey]:
        """The keys of the current key's map."""

    @abstractmethod
    def items(self) -> Iterator[tuple[MapKey, JsonValue]]:
        """The ``(key, value)`` entries of the current key's map."""

    @abstractmethod
    def clear(self) -> None:
        """Empties the current key's map."""


class ListState(ABC):
    """A list per key (Flink's ``ListState``)."""

    @abstractmethod
    def get(self) -> list[JsonValue]:
        """The current key's list (empty if it has none)."""

    @abstractmethod
    def add(self, value: JsonValue) -> None:
        """Appends ``value`` to the current key's list."""

    @abstractmethod
    def update(self, values: list[JsonValue]) -> None:
        """Replaces the current key's list (an empty list clears it)."""

    @abstractmethod
    def clear(self) -> None:
        """Removes the current key's list."""
