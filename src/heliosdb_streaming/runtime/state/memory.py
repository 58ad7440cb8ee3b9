"""In-memory keyed state: a dict per transformation per task, with an optional size budget per task.

The budget (``max_state_mb``) is checked from an estimate that costs almost nothing per write: every
``SAMPLE_EVERY`` writes one entry (the one written) is pickled, and a task's state is estimated as
its entries times the running average of the sampled sizes times ``OBJECT_OVERHEAD`` (Python objects
take several times their pickled size). Big values written rarely may be underestimated; state that
grows by many entries, as a window or pattern state does, is caught within ``SAMPLE_EVERY`` writes.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

SAMPLE_EVERY = 256
OBJECT_OVERHEAD = 4


class StateLimitExceededError(Exception):
    """A task's state outgrew ``max_state_mb``: the task fails instead of exhausting the machine."""


@dataclass(slots=True)
class StateBudget:
    """The state one task may hold in memory; its stores report to it."""

    task_id: str
    max_mb: int
    stores: list[MemoryStateStore] = field(default_factory=list)

    def check(self) -> None:
        used = sum(s.estimated_bytes() for s in self.stores)
        if used > self.max_mb * 1024 * 1024:
            entries = sum(len(s) for s in self.stores)
            raise StateLimitExceededError(
                f"state of task {self.task_id} exceeds max_state_mb={self.max_mb} (about "
                f"{used // (1024 * 1024)} MB in {entries} entries): use a smaller window or key space, "
                "raise max_state_mb, or use the rocksdb state backend"
            )


class MemoryStateStore:
    """The ``memory`` state backend. Snapshots are plain copies of the dict."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._budget: StateBudget | None = None
        self._writes = 0
        self._entry_bytes = 0.0  # running average of sampled entries, pickled

    def limit(self, budget: StateBudget) -> None:
        """Counts this store against ``budget`` (checked every ``SAMPLE_EVERY`` writes)."""
        if self._budget is not budget:
            self._budget = budget
            budget.stores.append(self)

    def estimated_bytes(self) -> int:
        return int(len(self._data) * self._entry_bytes * OBJECT_OVERHEAD)

    def lookup(self) -> Callable[[str, Any], Any]:
        """``get`` of the dict of every entry, for hot paths (a bound C method, no Python call)."""
        return self._data.get

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value
        if self._budget is not None:
            self._writes += 1
            if self._writes >= SAMPLE_EVERY:
                self._writes = 0
                size = len(key) + len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
                self._entry_bytes = size if not self._entry_bytes else 0.75 * self._entry_bytes + 0.25 * size
                self._budget.check()

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
