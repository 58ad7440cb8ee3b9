"""The checkpoint storage contract on the file system, and checkpoint URIs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from heliosdb_streaming.runtime.checkpoint.storage import (
    CheckpointStorage,
    FileCheckpointStorage,
    S3CheckpointStorage,
    storage_from_uri,
)

BAD_PATHS = ["", "/abs/x", "../x", "a/../b", "a/./b", "a//b", ".", "..", "a\\b", "a/\x00", "a/.helios-tmp-x"]


@pytest.fixture
def storage(tmp_path: Path) -> FileCheckpointStorage:
    return FileCheckpointStorage(tmp_path / "root")


async def test_write_read_exists_overwrite(storage: FileCheckpointStorage) -> None:
    assert isinstance(storage, CheckpointStorage)
    assert not await storage.exists("job-1/chk-1/a.snap")
    await storage.write("job-1/chk-1/a.snap", b"one")
    assert await storage.exists("job-1/chk-1/a.snap")
    assert await storage.read("job-1/chk-1/a.snap") == b"one"
    await storage.write("job-1/chk-1/a.snap", b"two")
    assert await storage.read("job-1/chk-1/a.snap") == b"two"
    await storage.write("empty", b"")
    assert await storage.read("empty") == b""
    assert not await storage.exists("job-1")  # a directory is not an object
    with pytest.raises(FileNotFoundError):
        await storage.read("job-1/chk-1/missing")
    with pytest.raises(FileNotFoundError):
        await storage.read("job-1")


async def test_uri(storage: FileCheckpointStorage, tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    assert storage.uri("job-1/chk-3/s0-p1.snap") == f"file://{root}/job-1/chk-3/s0-p1.snap"
    assert storage.uri("") == f"file://{root}"


async def test_write_file_and_read_to_file(storage: FileCheckpointStorage, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    data = os.urandom(3 * (1 << 20) + 17)
    local.write_bytes(data)
    assert await storage.write_file("shared/big.bin", local) == len(data)
    out = tmp_path / "out" / "deep" / "copy.bin"
    await storage.read_to_file("shared/big.bin", out)
    assert out.read_bytes() == data
    with pytest.raises(FileNotFoundError):
        await storage.read_to_file("shared/nope", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


async def test_list_is_recursive_sorted_and_prefix_is_a_directory(storage: FileCheckpointStorage) -> None:
    paths = ["j/chk-1/b", "j/chk-1/a", "j/chk-1/sub/c", "j/chk-10/x", "j/shared/1.sst", "k/other"]
    for p in paths:
        await storage.write(p, p.encode())
    assert await storage.list("j/chk-1") == ["j/chk-1/a", "j/chk-1/b", "j/chk-1/sub/c"]
    assert await storage.list("j/chk-1/") == ["j/chk-1/a", "j/chk-1/b", "j/chk-1/sub/c"]
    assert await storage.list("") == sorted(paths)
    assert await storage.list("j/chk-1/a") == ["j/chk-1/a"]
    assert await storage.list("nothing/here") == []
    assert await FileCheckpointStorage(storage.root / "missing-root").list("") == []


async def test_delete_prefix_and_delete(storage: FileCheckpointStorage) -> None:
    for p in ["j/chk-1/a", "j/chk-1/sub/b", "j/chk-10/a", "j/chk-2/a"]:
        await storage.write(p, b"x")
    assert await storage.delete_prefix("j/chk-1") == 2
    assert await storage.list("j") == ["j/chk-10/a", "j/chk-2/a"]
    assert not (storage.root / "j" / "chk-1").exists()  # empty directories are pruned
    assert await storage.delete_prefix("j/chk-1") == 0
    await storage.delete("j/chk-2/a")
    await storage.delete("j/chk-2/a")  # missing is fine
    assert await storage.list("") == ["j/chk-10/a"]
    assert await storage.delete_prefix("") == 1
    assert await storage.list("") == []
    assert storage.root.is_dir()  # the root itself stays
    await storage.write("j/chk-1/a", b"again")  # and can be written to again
    assert await storage.read("j/chk-1/a") == b"again"


async def test_write_is_atomic(storage: FileCheckpointStorage) -> None:
    old, new = b"o" * (8 << 20), b"n" * (8 << 20)
    await storage.write("j/state", old)
    seen: set[bytes] = set()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            data = await storage.read("j/state")
            assert data in (old, new), f"torn read: {len(data)} bytes"
            seen.add(data[:1])

    task = asyncio.create_task(reader())
    for i in range(6):
        await storage.write("j/state", new if i % 2 == 0 else old)
    stop.set()
    await task
    assert seen  # the reader saw whole objects only
    # a failing write leaves the old object and no temporary file behind
    with pytest.raises(TypeError):
        await storage.write("j/state", "not bytes")  # type: ignore[arg-type]
    assert await storage.read("j/state") in (old, new)
    assert sorted(p.name for p in (storage.root / "j").iterdir()) == ["state"]
    assert await storage.list("j") == ["j/state"]


@pytest.mark.parametrize("bad", BAD_PATHS)
async def test_paths_are_validated(storage: FileCheckpointStorage, bad: str) -> None:
    with pytest.raises(ValueError):
        await storage.write(bad, b"x")
    with pytest.raises(ValueError):
        await storage.read(bad)
    with pytest.raises(ValueError):
        await storage.exists(bad)
    with pytest.raises(ValueError):
        await storage.delete(bad)
    with pytest.raises(ValueError):
        await storage.write_file(bad, Path(__file__))
    with pytest.raises(ValueError):
        await storage.read_to_file(bad, storage.root / "x")
    if bad != "":  # the empty prefix means everything
        with pytest.raises(ValueError):
            await storage.list(bad)
        with pytest.raises(ValueError):
            await storage.delete_prefix(bad)
    assert not storage.root.exists() or not any(storage.root.rglob("*"))


async def test_delete_prefix_of_root_path_is_rejected(storage: FileCheckpointStorage) -> None:
    for bad in ["/", "//", "/j"]:
        with pytest.raises(ValueError):
            await storage.delete_prefix(bad)


# ------------------------------------------------------------------------------------------- URIs


def test_file_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = storage_from_uri(f"file://{tmp_path}/chk")
    assert isinstance(s, FileCheckpointStorage) and s.root == tmp_path.resolve() / "chk"
    s = storage_from_uri(str(tmp_path / "plain"))
    assert isinstance(s, FileCheckpointStorage) and s.root == tmp_path.resolve() / "plain"
    monkeypatch.chdir(tmp_path)
    s = storage_from_uri("relative/dir")
    assert isinstance(s, FileCheckpointStorage) and s.root == tmp_path.resolve() / "relative" / "dir"
    s = storage_from_uri("file://localhost/tmp/x%20y")
    assert isinstance(s, FileCheckpointStorage) and s.root == Path("/tmp/x y").resolve()


@pytest.mark.parametrize(
    "uri",
    ["", "   ", "ftp://host/x", "file://otherhost/x", "file:relative", "s3://", "s3:///prefix", "s3://b/p?x=1",
     "s3://b/../p", "s3://key:secret@bucket/p", "hdfs://nn/x", "s3:bucket"],
)  # fmt: skip
def test_bad_uris(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        storage_from_uri(uri, {"endpoint": "127.0.0.1:1", "access_key": "a", "secret_key": "b"})
    assert "secret" not in str(info.value).replace("secret_key", "")


def test_s3_uri_options_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [
        "HELIOS_S3_ENDPOINT",
        "HELIOS_S3_SECURE",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "MINIO_ACCESS_KEY",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("MINIO_SECRET_KEY", raising=False)
    secret = "SUPER-SECRET-VALUE-123"
    s = storage_from_uri(
        "s3://my-bucket/jobs/prod/",
        {
            "endpoint": "minio.local:9000",
            "access_key": "AKIAEXAMPLE",
            "secret_key": secret,
            "secure": "false",
        },
    )
    assert isinstance(s, S3CheckpointStorage)
    assert (s.bucket, s.prefix, s.endpoint, s.secure, s.region) == (
        "my-bucket",
        "jobs/prod",
        "minio.local:9000",
        False,
        None,
    )
    assert s.uri("job-1/chk-3/a.snap") == "s3://my-bucket/jobs/prod/job-1/chk-3/a.snap"
    assert secret not in repr(s) and "AKIAEXAMPLE" not in repr(s)
    assert all(secret not in repr(v) for v in vars(s).values() if not hasattr(v, "_provider"))

    monkeypatch.setenv("HELIOS_S3_ENDPOINT", "https://s3.example.com")
    monkeypatch.setenv("MINIO_ACCESS_KEY", "env-access")
    monkeypatch.setenv("MINIO_SECRET_KEY", "env-secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    s = storage_from_uri("s3://b")
    assert isinstance(s, S3CheckpointStorage)
    assert (s.bucket, s.prefix, s.endpoint, s.secure, s.region) == (
        "b",
        "",
        "s3.example.com",
        True,
        "eu-west-1",
    )
    assert s.uri("x") == "s3://b/x" and s.uri("") == "s3://b"

    monkeypatch.setenv("HELIOS_S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("HELIOS_S3_SECURE", "0")
    s = storage_from_uri("s3://b/p")
    assert isinstance(s, S3CheckpointStorage) and not s.secure

    with pytest.raises(ValueError) as info:
        storage_from_uri("s3://b/p", {"secure": "maybe", "secret_key": secret, "access_key": "a"})
    assert secret not in str(info.value)
    with pytest.raises(ValueError, match="contradicts"):
        storage_from_uri("s3://b/p", {"endpoint": "http://h:1", "secure": "true"})
    with pytest.raises(ValueError, match="unknown"):
        storage_from_uri("s3://b/p", {"password": secret})
    monkeypatch.delenv("MINIO_SECRET_KEY")
    with pytest.raises(ValueError, match="together"):
        storage_from_uri("s3://b/p")
