"""Snapshots of state stores: whole for the memory backend, incremental for RocksDB.

RocksDB snapshots use RocksDB checkpoints: a consistent copy of the database whose SST files are
hard links to the live ones. SST files never change once written, so each is uploaded once, under
its content hash, to a *shared* prefix (``<shared>/<sha256>.sst``) that many checkpoints reference; a
snapshot after a small change uploads only the few new SST files. The small other files (``CURRENT``,
``MANIFEST-*``, ``OPTIONS-*``, the WAL left after the flush, rocksdict's config) are inlined in the
returned manifest (base64), or, above :data:`INLINE_LIMIT`, also stored content-addressed in the
shared prefix.

Garbage collection of shared files belongs to the caller: a shared file may be deleted once no
retained checkpoint references it (:func:`referenced_shared_files`). Take the candidates from the
manifests of the checkpoints being dropped, not from a listing of the shared prefix: a listing also
holds files that an in-flight snapshot has just uploaded and will reference. This process remembers
which shared files it uploaded (to skip even the existence checks); call :func:`forget_uploaded`
for files deleted by this process, or :func:`clear_upload_cache` if another one may delete them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore

__all__ = [
    "INLINE_LIMIT",
    "MANIFEST_FORMAT",
    "LocalRocksDBSnapshot",
    "clear_upload_cache",
    "forget_uploaded",
    "prepare_rocksdb_snapshot",
    "referenced_shared_files",
    "restore_memory",
    "restore_rocksdb",
    "snapshot_memory",
    "snapshot_rocksdb",
    "upload_rocksdb_snapshot",
]

MANIFEST_FORMAT = "heliosdb-rocksdb-snapshot/1"
INLINE_LIMIT = 256 * 1024  # non-SST files up to this size go into the manifest itself
SHARED_SUFFIXES = (".sst", ".blob")  # immutable once written: uploaded once, shared by checkpoints
SKIPPED_FILES = ("LOCK", "LOG", "IDENTITY")  # per-instance files a restore must not carry over
TRANSFER_CONCURRENCY = 4

T = TypeVar("T")

# Storage URIs of shared files this process uploaded or saw in storage (content-addressed, immutable).
_uploaded: set[str] = set()


def forget_uploaded(storage: CheckpointStorage, paths: set[str] | list[str]) -> None:
    """Tells the upload cache that ``paths`` were deleted (call after garbage-collecting them)."""
    for path in paths:
        _uploaded.discard(storage.uri(path))


def clear_upload_cache() -> None:
    """Forgets every uploaded file: the next snapshots check existence in storage again."""
    _uploaded.clear()


# ------------------------------------------------------------------------------------------- memory


def snapshot_memory(store: MemoryStateStore) -> bytes:
    """The store's items as one orjson object (values must be JSON-like)."""
    return orjson.dumps(store.to_dict())


def restore_memory(data: bytes) -> MemoryStateStore:
    items = orjson.loads(data)
    if not isinstance(items, dict):
        raise ValueError(f"memory snapshot must be a JSON object, got {type(items).__name__}")
    return MemoryStateStore.from_dict(items)


# ------------------------------------------------------------------------------------------ RocksDB


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _is_shared(name: str) -> bool:
    return name.endswith(SHARED_SUFFIXES)


def _is_skipped(name: str) -> bool:
    return name in SKIPPED_FILES or name.startswith("LOG.old")


def _check_file_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"invalid file name in RocksDB snapshot manifest: {name!r}")
    return name


@dataclass(slots=True)
class LocalRocksDBSnapshot:
    """A RocksDB checkpoint on local disk, waiting for :func:`upload_rocksdb_snapshot`."""

    store: RocksDBStateStore
    directory: Path  # the RocksDB checkpoint, removed by discard()
    files: list[tuple[str, int]] = field(default_factory=list)  # (name, size)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def prepare_rocksdb_snapshot(store: RocksDBStateStore, scratch: Path) -> LocalRocksDBSnapshot:
    """The synchronous phase: a RocksDB checkpoint of ``store`` as of this call, under ``scratch``.

    If ``scratch`` does not exist it becomes the checkpoint directory; otherwise the checkpoint goes
    into a new subdirectory of it. The store may be written to as soon as this returns: the checkpoint
    is a frozen copy (hard links). Blocks for the memtable flush: call ``store.flush()`` in a thread
    first to keep it short.
    """
    scratch = Path(scratch)
    directory = scratch / f"rocksdb-{uuid.uuid4().hex}" if scratch.exists() else scratch
    store.checkpoint(directory)
    try:
        files: list[tuple[str, int]] = []
        for entry in sorted(directory.iterdir()):
            if _is_skipped(entry.name):
                continue
            if not entry.is_file():
                raise ValueError(f"unexpected entry in RocksDB checkpoint: {entry.name}")
            files.append((entry.name, entry.stat().st_size))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return LocalRocksDBSnapshot(store=store, directory=directory, files=files)


async def _bounded(jobs: list[Awaitable[T]], limit: int = TRANSFER_CONCURRENCY) -> list[T]:
    """Awaits ``jobs`` (not yet started coroutines), at most ``limit`` at a time; results in order.

    Every job runs to its end even if one fails (so no thread is still writing files when the caller
    cleans up), then the first failure is raised.
    """
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Awaitable[T]) -> T:
        async with semaphore:
            return await job

    results = await asyncio.gather(*(run(job) for job in jobs), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


async def upload_rocksdb_snapshot(
    local: LocalRocksDBSnapshot, storage: CheckpointStorage, shared_prefix: str
) -> tuple[dict[str, Any], int]:
    """The asynchronous phase: uploads what storage lacks; returns (manifest, bytes written).

    Does not remove the local checkpoint (see :meth:`LocalRocksDBSnapshot.discard`).
    """
    shared_prefix = shared_prefix.strip("/")
    digests = local.store.file_digests

    async def describe(name: str, size: int) -> dict[str, Any]:
        source = local.directory / name
        if _is_shared(name):
            known = digests.get(name)
            if known is not None and known[0] == size:
                sha = known[1]
            else:
                sha = await asyncio.to_thread(_sha256_file, source)
                digests[name] = (size, sha)
            return {"name": name, "size": size, "sha256": sha, "path": f"{shared_prefix}/{sha}.sst"}
        data = await asyncio.to_thread(source.read_bytes)
        size = len(data)
        sha = hashlib.sha256(data).hexdigest()
        if size <= INLINE_LIMIT:
            return {
                "name": name,
                "size": size,
                "sha256": sha,
                "inline": base64.b64encode(data).decode("ascii"),
            }
        return {"name": name, "size": size, "sha256": sha, "path": f"{shared_prefix}/{sha}.dat"}

    entries = await _bounded([describe(name, size) for name, size in local.files])

    async def upload(entry: dict[str, Any]) -> int:
        path: str = entry["path"]
        key = storage.uri(path)
        if key in _uploaded:
            return 0
        if await storage.exists(path):
            _uploaded.add(key)
            return 0
        written = await storage.write_file(path, local.directory / entry["name"])
        _uploaded.add(key)
        return written

    to_upload: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if "path" in entry:
            to_upload.setdefault(entry["path"], entry)
    written = sum(await _bounded([upload(entry) for entry in to_upload.values()]))
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "files": entries,
        "total_bytes": sum(int(e["size"]) for e in entries),
    }
    return manifest, written


async def snapshot_rocksdb(
    store: RocksDBStateStore, storage: CheckpointStorage, shared_prefix: str, scratch: Path
) -> tuple[dict[str, Any], int]:
    """Snapshots ``store`` incrementally into ``storage``; returns (manifest, bytes written now).

    The manifest is JSON-able and small (SST files are referenced, not included); store it with the
    checkpoint and pass it to :func:`restore_rocksdb`. ``scratch`` is a local path for the temporary
    RocksDB checkpoint (same file system as the store, for hard links), removed before returning.

    The state captured is the store's as of the checkpoint step, which follows a flush run in a
    thread: do not write to this store until this coroutine returns, or use
    :func:`prepare_rocksdb_snapshot` (synchronous, captures the state at the call) followed by
    :func:`upload_rocksdb_snapshot` (asynchronous; writes to the store in the meantime are fine).
    """
    await asyncio.to_thread(store.flush)
    local = prepare_rocksdb_snapshot(store, scratch)
    try:
        return await upload_rocksdb_snapshot(local, storage, shared_prefix)
    finally:
        await asyncio.to_thread(local.discard)


def referenced_shared_files(manifest: dict[str, Any]) -> set[str]:
    """Storage paths of the shared files a RocksDB snapshot manifest needs."""
    _check_manifest(manifest)
    return {str(entry["path"]) for entry in manifest["files"] if "path" in entry}


def _check_manifest(manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"not a RocksDB snapshot manifest (format {found!r}, expected {MANIFEST_FORMAT!r})")
    if not isinstance(manifest.get("files"), list):
        raise ValueError("RocksDB snapshot manifest has no file list")


def _verify(path: Path, size: int, sha: str, name: str) -> None:
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ValueError(f"RocksDB snapshot file {name} has {actual_size} bytes, expected {size}")
    if _sha256_file(path) != sha:
        raise ValueError(f"RocksDB snapshot file {name} does not match its sha256 (corrupt)")


async def restore_rocksdb(
    manifest: dict[str, Any], storage: CheckpointStorage, target_dir: Path
) -> RocksDBStateStore:
    """Downloads a RocksDB snapshot into ``target_dir`` (missing or empty) and opens the store there.

    Every file is checked against its size and sha256. On failure the files written are removed.
    """
    _check_manifest(manifest)
    target_dir = Path(target_dir)
    if target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())):
        raise FileExistsError(f"restore target must be missing or an empty directory: {target_dir}")
    entries: list[dict[str, Any]] = manifest["files"]
    names = [_check_file_name(entry.get("name")) for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError("RocksDB snapshot manifest lists a file twice")
    target_dir.mkdir(parents=True, exist_ok=True)

    async def fetch(entry: dict[str, Any]) -> None:
        name, size, sha = str(entry["name"]), int(entry["size"]), str(entry["sha256"])
        local = target_dir / name
        if "inline" in entry:
            data = base64.b64decode(entry["inline"], validate=True)
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                raise ValueError(f"RocksDB snapshot file {name} (inline) does not match its size/sha256")
            await asyncio.to_thread(local.write_bytes, data)
        else:
            await storage.read_to_file(str(entry["path"]), local)
            await asyncio.to_thread(_verify, local, size, sha, name)

    try:
        await _bounded([fetch(entry) for entry in entries])
        store = await asyncio.to_thread(RocksDBStateStore, target_dir)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, target_dir, True)
        raise
    for entry in entries:
        if "path" in entry:
            _uploaded.add(storage.uri(str(entry["path"])))
        if _is_shared(str(entry["name"])):
            store.file_digests[str(entry["name"])] = (int(entry["size"]), str(entry["sha256"]))
    return store
