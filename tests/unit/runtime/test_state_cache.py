"""The write-back cache over a RocksDB store: reads served from it, writes buffered until write_back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from heliosdb_streaming.runtime.state.cached import WriteBackCache
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore


@pytest.fixture
def db(tmp_path: Path) -> Iterator[RocksDBStateStore]:
    store = RocksDBStateStore(tmp_path / "db")
    yield store
    store.close()


def test_writes_reach_the_store_only_on_write_back(db: RocksDBStateStore) -> None:
    db.put("old", 1)
    db.put("gone", 2)
    cache = WriteBackCache(db)
    assert cache.get("old") == 1 and cache.get("missing", "d") == "d"
    cache.put("new", {"a": 1})
    cache.put("old", 5)
    cache.delete("gone")
    cache.put("flip", 1)
    cache.delete("flip")
    cache.delete("never")
    assert (cache.get("new"), cache.get("old"), cache.get("gone", "x"), cache.get("flip")) == (
        {"a": 1},
        5,
        "x",
        None,
    )
    assert (db.get("new"), db.get("old"), db.get("gone")) == (None, 1, 2)
    cache.write_back()
    assert dict(db.items()) == {"new": {"a": 1}, "old": 5}
    cache.put("later", 1)
    assert dict(cache.items()) == {"later": 1, "new": {"a": 1}, "old": 5}  # items writes back first


def test_a_full_cache_writes_back_before_it_forgets(db: RocksDBStateStore) -> None:
    cache = WriteBackCache(db, max_entries=3)
    for i in range(10):
        cache.put(f"k{i}", i)
        assert cache.get(f"r{i}") is None  # reads of absent keys fill the cache too
    assert all(cache.get(f"k{i}") == i for i in range(10))
    cache.write_back()
    assert {k: v for k, v in db.items("k")} == {f"k{i}": i for i in range(10)}


def test_stores_without_write_batches_get_single_writes() -> None:
    memory = MemoryStateStore()
    cache = WriteBackCache(memory)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.delete("b")
    assert memory.get("a") is None
    cache.write_back()
    assert dict(memory.items()) == {"a": 1}
