"""State store snapshots: memory round trip, incremental RocksDB snapshots on file storage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from heliosdb_streaming.runtime.checkpoint import snapshots
from heliosdb_streaming.runtime.checkpoint.snapshots import (
    clear_upload_cache,
    prepare_rocksdb_snapshot,
    referenced_shared_files,
    restore_memory,
    restore_rocksdb,
    snapshot_memory,
    snapshot_rocksdb,
    upload_rocksdb_snapshot,
)
from heliosdb_streaming.runtime.checkpoint.storage import FileCheckpointStorage
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore


def value(i: int) -> dict[str, Any]:
    return {"count": i, "sum": i * 1.5, "last": f"card-{i % 997}", "tags": [i % 3, None, True]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RocksDBStateStore]:
    s = RocksDBStateStore(tmp_path / "db")
    yield s
    s.close()


@pytest.fixture
def storage(tmp_path: Path) -> FileCheckpointStorage:
    return FileCheckpointStorage(tmp_path / "checkpoints")


def test_memory_round_trip() -> None:
    store = MemoryStateStore()
    for i in range(1000):
        store.put(f"k{i}", value(i))
    store.put("unicode-é", {"nested": {"a": [1, 2.5, "x"]}})
    store.delete("k5")
    data = snapshot_memory(store)
    restored = restore_memory(data)
    assert dict(restored.items()) == dict(store.items())
    assert len(restored) == 1000
    assert restore_memory(snapshot_memory(MemoryStateStore())).get("x") is None
    with pytest.raises(ValueError):
        restore_memory(b"[1, 2]")


async def test_rocksdb_incremental_snapshots_and_restore(
    store: RocksDBStateStore, storage: FileCheckpointStorage, tmp_path: Path
) -> None:
    clear_upload_cache()
    for i in range(10_000):
        store.put(f"key-{i:06d}", value(i))
    expected1 = dict(store.items())
    manifest1, written1 = await snapshot_rocksdb(store, storage, "job-1/shared", tmp_path / "scratch-1")
    assert not (tmp_path / "scratch-1").exists()  # the local checkpoint is gone
    manifest1 = orjson.loads(orjson.dumps(manifest1))  # JSON-able; what the lead stores and reads back

    for i in range(100):
        store.put(f"new-{i:03d}", value(-i))
    store.put("key-000001", {"changed": True})
    store.delete("key-000002")
    expected2 = dict(store.items())
    manifest2, written2 = await snapshot_rocksdb(store, storage, "job-1/shared", tmp_path / "scratch-2")

    shared1, shared2 = referenced_shared_files(manifest1), referenced_shared_files(manifest2)
    assert shared1 and shared1 <= shared2  # nothing compacted away yet: the old SSTs are reused
    assert all(p.startswith("job-1/shared/") and p.endswith(".sst") for p in shared2)
    assert set(await storage.list("job-1/shared")) == shared2
    assert written1 > 100_000
    assert written2 < written1 / 20, (written1, written2)
    assert written2 == sum(e["size"] for e in manifest2["files"] if e.get("path") in shared2 - shared1)

    # the same state again: nothing new to upload
    manifest3, written3 = await snapshot_rocksdb(store, storage, "job-1/shared", tmp_path / "scratch-3")
    assert written3 == 0 and referenced_shared_files(manifest3) == shared2

    restored1 = await restore_rocksdb(manifest1, storage, tmp_path / "restore-1")
    restored2 = await restore_rocksdb(manifest2, storage, tmp_path / "restore-2")
    try:
        assert dict(restored1.items()) == expected1
        assert dict(restored2.items()) == expected2
        assert restored2.get("key-000002") is None and restored2.get("key-000001") == {"changed": True}
        # a restored store keeps working and snapshots incrementally from where it was
        restored1.put("after-restore", 1)
        clear_upload_cache()  # as in a new process: existence checks instead of the cache
        manifest4, written4 = await snapshot_rocksdb(restored1, storage, "job-1/shared", tmp_path / "s4")
        assert shared1 <= referenced_shared_files(manifest4)
        assert written4 < 10_000
    finally:
        restored1.close()
        restored2.close()
    restored4 = await restore_rocksdb(manifest4, storage, tmp_path / "restore-4")
    try:
        assert dict(restored4.items()) == {**expected1, "after-restore": 1}
    finally:
        restored4.close()


async def test_prepare_then_upload_captures_the_state_at_prepare(
    store: RocksDBStateStore, storage: FileCheckpointStorage, tmp_path: Path
) -> None:
    for i in range(500):
        store.put(f"k{i}", i)
    scratch = tmp_path / "scratch"
    scratch.mkdir()  # an existing scratch directory: the checkpoint goes into a subdirectory
    local = prepare_rocksdb_snapshot(store, scratch)
    store.put("later", True)  # written while the upload runs: not part of the snapshot
    store.delete("k0")
    try:
        manifest, _ = await upload_rocksdb_snapshot(local, storage, "j/shared")
    finally:
        local.discard()
    assert scratch.is_dir() and not any(scratch.iterdir())
    restored = await restore_rocksdb(manifest, storage, tmp_path / "restored")
    try:
        assert dict(restored.items()) == {f"k{i}": i for i in range(500)}
    finally:
        restored.close()


async def test_restore_checks_target_and_content(
    store: RocksDBStateStore, storage: FileCheckpointStorage, tmp_path: Path
) -> None:
    for i in range(2000):
        store.put(f"k{i}", value(i))
    manifest, _ = await snapshot_rocksdb(store, storage, "j/shared", tmp_path / "scratch")

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    with pytest.raises(FileExistsError):
        await restore_rocksdb(manifest, storage, busy)

    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty directory is fine
    restored = await restore_rocksdb(manifest, storage, empty)
    assert restored.get("k7") == value(7)
    restored.close()

    with pytest.raises(ValueError, match="manifest"):
        await restore_rocksdb({"format": "other"}, storage, tmp_path / "bad-format")
    with pytest.raises(ValueError, match="file name"):
        evil = {**manifest, "files": [{**manifest["files"][0], "name": "../escape"}]}
        await restore_rocksdb(evil, storage, tmp_path / "evil")

    # a shared file that went bad in storage is detected, and the partial restore removed
    sst = sorted(referenced_shared_files(manifest))[0]
    data = bytearray(await storage.read(sst))
    data[len(data) // 2] ^= 0xFF
    await storage.write(sst, bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        await restore_rocksdb(manifest, storage, tmp_path / "corrupt")
    assert not (tmp_path / "corrupt").exists()

    await storage.delete(sst)
    with pytest.raises(FileNotFoundError):
        await restore_rocksdb(manifest, storage, tmp_path / "missing")


async def test_large_non_sst_files_go_to_shared_storage(
    store: RocksDBStateStore, storage: FileCheckpointStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots, "INLINE_LIMIT", 64)  # MANIFEST and OPTIONS exceed this
    store.put("a", 1)
    manifest, written = await snapshot_rocksdb(store, storage, "j/shared", tmp_path / "scratch")
    dat = {p for p in referenced_shared_files(manifest) if p.endswith(".dat")}
    assert dat and written >= sum(e["size"] for e in manifest["files"] if e.get("path") in dat)
    restored = await restore_rocksdb(manifest, storage, tmp_path / "restored")
    try:
        assert dict(restored.items()) == {"a": 1}
    finally:
        restored.close()
