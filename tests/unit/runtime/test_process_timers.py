"""Timer queues: time order, dedup of (key, time), deletion, persistence in the store."""

from __future__ import annotations

from pathlib import Path

from heliosdb_streaming.runtime.state.keyed import key_string
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore
from heliosdb_streaming.runtime.state.timers import EVENT, PROCESSING, TimerQueue


def register(q: TimerQueue, ts: int, key: object) -> None:
    q.register(ts, key, key_string(key))


def drain(q: TimerQueue, until: int) -> list[tuple[int, object]]:
    fired = []
    while (due := q.pop_due(until)) is not None:
        fired.append((due[0], due[1]))
    return fired


def test_timers_fire_in_time_then_key_order_once_each() -> None:
    q = TimerQueue(MemoryStateStore(), EVENT)
    for ts, key in [(30, "b"), (10, "b"), (30, "a"), (20, "a"), (10, "b"), (-5, None)]:
        register(q, ts, key)
    assert len(q) == 5  # (10, "b") twice is one timer
    assert q.next_time() == -5
    assert drain(q, 20) == [(-5, None), (10, "b"), (20, "a")]
    assert drain(q, 29) == []
    register(q, 25, "c")  # registered later, still fires in time order
    assert drain(q, 100) == [(25, "c"), (30, "a"), (30, "b")]
    assert q.next_time() is None and len(q) == 0


def test_deleted_timers_do_not_fire_and_can_be_registered_again() -> None:
    store = MemoryStateStore()
    q = TimerQueue(store, PROCESSING)
    register(q, 10, "a")
    register(q, 20, "a")
    q.delete(10, key_string("a"))
    q.delete(15, key_string("a"))  # no such timer: nothing happens
    q.delete(20, key_string("b"))  # another key's time: nothing happens
    assert q.next_time() == 20
    register(q, 10, "a")
    q.delete(10, key_string("a"))
    assert drain(q, 100) == [(20, "a")]
    assert list(store.items()) == []


def test_timers_live_in_the_store_and_survive_a_restore(tmp_path: Path) -> None:
    db = RocksDBStateStore(tmp_path / "db")
    try:
        q = TimerQueue(db, EVENT)
        register(q, 5, {"card": 1})
        register(q, 7, "x|y")
        register(q, 3, 12)
        q.pop_due(3)
        other = TimerQueue(db, PROCESSING)
        register(other, 1, "p")
        restored = TimerQueue(db, EVENT)
        restored.restore()
        assert list(restored.pending()) == [(5, {"card": 1}), (7, "x|y")]
        assert drain(restored, 10) == [(5, {"card": 1}), (7, "x|y")]
        again = TimerQueue(db, PROCESSING)
        again.restore()
        assert list(again.pending()) == [(1, "p")]
    finally:
        db.close()
