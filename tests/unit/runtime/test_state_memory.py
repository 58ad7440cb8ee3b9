"""The memory state backend's budget: a task's stores together, estimated from sampled entries."""

from __future__ import annotations

import pytest

from heliosdb_streaming.runtime.state.memory import (
    SAMPLE_EVERY,
    MemoryStateStore,
    StateBudget,
    StateLimitExceededError,
)


def test_a_task_over_budget_fails_with_its_name_and_limit() -> None:
    budget = StateBudget("task-7", max_mb=1)
    a, b = MemoryStateStore(), MemoryStateStore()
    a.limit(budget)
    b.limit(budget)
    a.limit(budget)  # once per store
    assert budget.stores == [a, b]
    value = "x" * 1000
    with pytest.raises(StateLimitExceededError, match=r"state of task task-7 exceeds max_state_mb=1") as info:
        for i in range(10_000):
            (a if i % 2 else b).put(f"k{i}", value)
    written = len(a) + len(b)
    # caught within one sampling period of the limit: ~1 MiB / (4 x ~1 KB) entries
    assert 200 <= written <= 256 + 2 * SAMPLE_EVERY, written
    assert "rocksdb" in str(info.value)


def test_a_store_without_budget_is_unbounded_and_unchanged() -> None:
    store = MemoryStateStore()
    for i in range(5 * SAMPLE_EVERY):
        store.put(f"k{i}", "x" * 100)
    assert len(store) == 5 * SAMPLE_EVERY and store.estimated_bytes() == 0
    assert MemoryStateStore.from_dict(store.to_dict()).get("k1") == "x" * 100
