"""The checkpoint storage contract against a real S3-protocol server (and the file system, to show
both behave the same), plus RocksDB snapshots stored in and restored from S3."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliosdb_streaming.runtime.checkpoint.snapshots import (
    clear_upload_cache,
    referenced_shared_files,
    restore_rocksdb,
    snapshot_rocksdb,
)
from heliosdb_streaming.runtime.checkpoint.storage import (
    CheckpointStorage,
    FileCheckpointStorage,
    S3CheckpointStorage,
    storage_from_uri,
)
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore


def new_s3(options: dict[str, str], prefix: str = "checkpoints/prod") -> S3CheckpointStorage:
    bucket = f"helios-test-{uuid.uuid4().hex[:12]}"
    storage = storage_from_uri(f"s3://{bucket}/{prefix}", options)
    assert isinstance(storage, S3CheckpointStorage)
    return storage


@pytest.fixture(params=["s3", "s3-no-prefix", "file"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStorage:
    if request.param == "file":
        return FileCheckpointStorage(tmp_path / "root")
    options: dict[str, str] = request.getfixturevalue("s3_options")
    return new_s3(options, "" if request.param == "s3-no-prefix" else "checkpoints/prod")


async def test_write_read_exists_overwrite(storage: CheckpointStorage) -> None:
    assert not await storage.exists("job-1/chk-1/a.snap")  # also: the bucket is missing until the write
    await storage.write("job-1/chk-1/a.snap", b"one")
    assert await storage.exists("job-1/chk-1/a.snap")
    assert await storage.read("job-1/chk-1/a.snap") == b"one"
    await storage.write("job-1/chk-1/a.snap", b"two")
    assert await storage.read("job-1/chk-1/a.snap") == b"two"
    await storage.write("empty", b"")
    assert await storage.read("empty") == b""
    assert not await storage.exists("job-1")
    with pytest.raises(FileNotFoundError):
        await storage.read("job-1/chk-1/missing")
    assert storage.uri("job-1/chk-1/a.snap").endswith("/job-1/chk-1/a.snap")


async def test_write_file_and_read_to_file(storage: CheckpointStorage, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    data = os.urandom(12 * (1 << 20) + 17)  # above the multipart threshold of the S3 client
    local.write_bytes(data)
    assert await storage.write_file("shared/big.bin", local) == len(data)
    out = tmp_path / "out" / "deep" / "copy.bin"
    await storage.read_to_file("shared/big.bin", out)
    assert out.read_bytes() == data
    with pytest.raises(FileNotFoundError):
        await storage.read_to_file("shared/nope", tmp_path / "nope")


async def test_list_delete_prefix_delete(storage: CheckpointStorage) -> None:
    paths = ["j/chk-1/b", "j/chk-1/a", "j/chk-1/sub/c", "j/chk-10/x", "j/shared/1.sst", "k/other"]
    for p in paths:
        await storage.write(p, p.encode())
    assert await storage.list("j/chk-1") == ["j/chk-1/a", "j/chk-1/b", "j/chk-1/sub/c"]
    assert await storage.list("j/chk-1/") == ["j/chk-1/a", "j/chk-1/b", "j/chk-1/sub/c"]
    assert await storage.list("j/chk-1/a") == ["j/chk-1/a"]
    assert await storage.list("") == sorted(paths)
    assert await storage.list("none") == []
    assert await storage.delete_prefix("j/chk-1") == 3
    assert await storage.list("j") == ["j/chk-10/x", "j/shared/1.sst"]
    await storage.delete("j/chk-10/x")
    await storage.delete("j/chk-10/x")  # missing is fine
    assert await storage.delete_prefix("") == 2
    assert await storage.list("") == []


async def test_many_objects(storage: CheckpointStorage) -> None:
    """Listing and deleting page through more than one S3 page (1000 keys)."""
    import asyncio

    await asyncio.gather(*(storage.write(f"many/{i:05d}", b"x") for i in range(1100)))
    listed = await storage.list("many")
    assert listed == [f"many/{i:05d}" for i in range(1100)]
    assert await storage.delete_prefix("many") == 1100
    assert await storage.list("") == []


async def test_paths_are_validated(storage: CheckpointStorage) -> None:
    for bad in ["", "/abs", "../x", "a/../b", "a//b", "a\\b"]:
        with pytest.raises(ValueError):
            await storage.write(bad, b"x")
        with pytest.raises(ValueError):
            await storage.read(bad)
    for bad in ["/", "/abs", "../x"]:
        with pytest.raises(ValueError):
            await storage.delete_prefix(bad)


async def test_s3_outside_the_prefix_is_untouched(s3_options: dict[str, str]) -> None:
    bucket = f"helios-test-{uuid.uuid4().hex[:12]}"
    a = storage_from_uri(f"s3://{bucket}/a", s3_options)
    ab = storage_from_uri(f"s3://{bucket}/ab", s3_options)
    root = storage_from_uri(f"s3://{bucket}", s3_options)
    await a.write("x", b"1")
    await ab.write("x", b"2")
    assert await a.list("") == ["x"]
    assert await root.list("") == ["a/x", "ab/x"]
    assert await a.delete_prefix("") == 1
    assert await root.list("") == ["ab/x"]
    assert a.uri("x") == f"s3://{bucket}/a/x"


async def test_s3_wrong_credentials_fail_without_leaking(s3_options: dict[str, str]) -> None:
    storage = new_s3({**s3_options, "secret_key": "WRONG-SECRET-abc123"})
    assert "WRONG-SECRET-abc123" not in repr(storage)
    try:
        await storage.write("x", b"1")
    except Exception as e:  # moto accepts any credentials; a real server refuses them
        assert "WRONG-SECRET-abc123" not in str(e)


# --------------------------------------------------------------------------------- RocksDB in S3


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RocksDBStateStore]:
    s = RocksDBStateStore(tmp_path / "db")
    yield s
    s.close()


async def test_rocksdb_snapshots_in_s3(
    s3_options: dict[str, str], store: RocksDBStateStore, tmp_path: Path
) -> None:
    storage = new_s3(s3_options)
    for i in range(10_000):
        store.put(f"key-{i:06d}", {"n": i, "s": f"v{i}"})
    expected1 = dict(store.items())
    manifest1, written1 = await snapshot_rocksdb(store, storage, "job-1/shared", tmp_path / "scratch")
    for i in range(100):
        store.put(f"more-{i}", i)
    store.delete("key-000000")
    expected2 = dict(store.items())
    manifest2, written2 = await snapshot_rocksdb(store, storage, "job-1/shared", tmp_path / "scratch")
    assert written2 < written1 / 20, (written1, written2)
    assert set(await storage.list("job-1/shared")) == referenced_shared_files(manifest2)

    clear_upload_cache()  # a new process: restores read everything from S3
    restored1 = await restore_rocksdb(manifest1, storage, tmp_path / "r1")
    restored2 = await restore_rocksdb(manifest2, storage, tmp_path / "r2")
    try:
        assert dict(restored1.items()) == expected1
        assert dict(restored2.items()) == expected2
        clear_upload_cache()
        restored2.put("after", 1)
        _, written3 = await snapshot_rocksdb(restored2, storage, "job-1/shared", tmp_path / "scratch")
        assert written3 < written1 / 20
    finally:
        restored1.close()
        restored2.close()


async def test_s3_reads_never_create_the_bucket(s3_options: dict[str, str], tmp_path: Path) -> None:
    """Locating a savepoint reads: a read, a listing or a delete in a missing bucket has no side effect."""
    from minio import Minio

    storage = new_s3(s3_options)
    assert not await storage.exists("job-1/savepoints/sp/_manifest.json")
    with pytest.raises(FileNotFoundError):
        await storage.read("job-1/savepoints/sp/_manifest.json")
    with pytest.raises(FileNotFoundError):
        await storage.read_to_file("job-1/chk-1/a.snap", tmp_path / "a.snap")
    assert await storage.list("job-1") == []
    assert await storage.delete_prefix("job-1") == 0
    await storage.delete("job-1/chk-1/a.snap")
    endpoint = s3_options["endpoint"].split("://", 1)[1]
    client = Minio(
        endpoint, s3_options["access_key"], s3_options["secret_key"], secure=False, region="us-east-1"
    )
    assert not client.bucket_exists(storage.bucket)
    await storage.write("job-1/chk-1/a.snap", b"1")  # the first write makes it
    assert client.bucket_exists(storage.bucket)


@pytest.mark.parametrize("answer", ["refused", "silent"])
async def test_s3_unreachable_is_a_connection_error_within_the_timeout(answer: str) -> None:
    """A dead endpoint (nothing listens) or a silent one (accepts, never answers): a bounded wait and
    an ``OSError`` naming the endpoint, not minutes of retries or a client library's exception."""
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if answer == "silent":
        listener.listen(8)
    else:
        listener.close()
    try:
        options = {
            "endpoint": f"http://127.0.0.1:{port}",
            "access_key": "a",
            "secret_key": "b",
            "region": "x",
        }
        storage = storage_from_uri("s3://bucket/prefix", options, timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(ConnectionError, match=f"cannot reach S3 at 127.0.0.1:{port}"):
            await storage.read("job-1/_manifest.json")
        assert time.monotonic() - started < 4
    finally:
        listener.close()
