"""A worker's tasks: one split each, with its chain of transformations, its state stores and counters.

The worker's other parts (the data path, the checkpoint participant, heartbeats) all look at the same
tasks; this module holds what they share, so none of them has to import another to know what a task
is. ``TaskStores`` owns every state store the worker opened: which backend a new store gets, the
per-task memory budget (``max_state_mb``) and closing them at the end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heliosdb_streaming.model.config import JobConfig, StateBackendType
from heliosdb_streaming.runtime.contracts import Batch, Record, SourceReader, Split, StateStore
from heliosdb_streaming.runtime.histogram import LatencyHistogram
from heliosdb_streaming.runtime.state.memory import MemoryStateStore, StateBudget
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore


class TaskFailure(Exception):
    """A task hit a record error under ``on_error: fail``, or a sink could not write."""


@dataclass(slots=True)
class Task:
    """One split with its chain of transformations and its position in the source."""

    split: Split
    reader: SourceReader
    chain: list[Any]
    stores: dict[str, StateStore] = field(default_factory=dict)
    position: Any = None
    finished: bool = False
    events_in: int = 0
    events_out: int = 0


@dataclass(slots=True)
class Counters:
    """The worker's cumulative counters, sent in every heartbeat."""

    events_in: int = 0
    events_out: int = 0
    errors: int = 0
    late_dropped: int = 0
    backpressure_events: int = 0
    backpressure_ms: float = 0.0
    # time the processing loop spent on records (chains, timers, sinks), not waiting for input: the
    # autoscaler's busy time (busy_ms over wall time), as Flink's busyTimeMsPerSecond
    busy_ms: float = 0.0
    busy_since: float | None = None  # monotonic start of the busy period in progress, if any
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def begin_busy(self) -> None:
        if self.busy_since is None:
            self.busy_since = time.monotonic()

    def end_busy(self) -> None:
        since, self.busy_since = self.busy_since, None
        if since is not None:
            self.busy_ms += (time.monotonic() - since) * 1000

    def busy_now(self) -> float:
        """``busy_ms`` including the busy period in progress (a turn may process batches for seconds;
        the heartbeat thread must see that time as it passes, not all at once at its end)."""
        since = self.busy_since
        return self.busy_ms + ((time.monotonic() - since) * 1000 if since is not None else 0.0)


def run_chain(chain: list[Any], records: Batch, errors: list[tuple[Record, Exception]], start: int) -> Batch:
    """Runs ``records`` through the steps of ``chain`` from ``start`` on; failed records go to ``errors``."""
    for step in chain[start:]:
        if not records:
            break
        records = step.process(records, errors)
    return records


def before_snapshot(chain: list[Any]) -> None:
    """Lets every step write what it buffers to its stores (``before_snapshot``, optional): a task's
    snapshot then holds all of its state."""
    for step in chain:
        hook = getattr(step, "before_snapshot", None)
        if hook is not None:
            hook()


class TaskStores:
    """Every state store of a worker's tasks, restored or new, so they are limited and closed alike."""

    def __init__(self, config: JobConfig, job_dir: Path, attempt: int) -> None:
        self._config = config
        self._job_dir = job_dir
        self._attempt = attempt
        self._stores: list[StateStore] = []
        self._budgets: dict[str, StateBudget] = {}

    def state_dir(self, split_id: str) -> Path:
        """Where this attempt keeps the on-disk state of one split (RocksDB, restored snapshots)."""
        return self._job_dir / "state" / f"attempt-{self._attempt}" / split_id

    def adopt(self, stores: Iterable[StateStore]) -> None:
        """Takes restored stores in, so they are closed with the others."""
        self._stores.extend(stores)

    def store(self, task: Task, name: str) -> StateStore:
        """The store named ``name`` of a task: the restored one if there is one, else a new one."""
        return self.open_store(task.split.split_id, task.stores, name)

    def open_store(self, task_id: str, stores: dict[str, StateStore], name: str) -> StateStore:
        """The store ``name`` in ``stores`` (a task's, split or stage task), opened if missing."""
        store = stores.get(name)
        if store is not None:
            return self._limited(task_id, store)
        if self._config.state_backend == StateBackendType.ROCKSDB:
            store = RocksDBStateStore(self.state_dir(task_id) / name)
        else:
            store = MemoryStateStore()
        stores[name] = store
        self._stores.append(store)
        return self._limited(task_id, store)

    def _limited(self, task_id: str, store: StateStore) -> StateStore:
        """A memory store counts against its task's ``max_state_mb`` (all stores of the task together)."""
        if isinstance(store, MemoryStateStore):
            budget = self._budgets.setdefault(task_id, StateBudget(task_id, self._config.max_state_mb))
            store.limit(budget)
        return store

    def close(self) -> None:
        for store in self._stores:
            close = getattr(store, "close", None)
            if close:
                with contextlib.suppress(Exception):
                    close()
