"""The worker's side of checkpoints: task snapshots, their restore, and exactly-once sink staging.

A task snapshot holds everything a task needs to continue as if nothing happened: the source
position, every state store of its chain, and the exactly-once sinks' output that was produced
before the barrier but is not committed yet. Layout in checkpoint storage::

    <job_id>/chk-<N>/<split_id>.snap        task snapshots of checkpoint N (orjson)
    <job_id>/chk-<N>/_manifest.json         written by the coordinator once every worker acked
    <job_id>/shared/<sha256>.sst            RocksDB files shared by checkpoints (incremental)
    <job_id>/savepoints/<savepoint_id>/...  savepoints: self-contained, kept until deleted
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming.runtime.checkpoint import snapshots
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage, storage_from_uri
from heliosdb_streaming.runtime.contracts import Record, StateStore
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore

MANIFEST = "_manifest.json"


@dataclass(frozen=True, slots=True)
class Barrier:
    """A request to snapshot every task: checkpoint ``checkpoint_id`` into ``directory``."""

    checkpoint_id: int
    directory: str  # e.g. "job-1/chk-7" or "job-1/savepoints/savepoint-..."
    shared: str  # where RocksDB files go: shared by checkpoints, private to a savepoint
    final: bool = False  # the last checkpoint of a bounded job: commit everything, then finish

    @staticmethod
    def from_message(message: dict[str, Any]) -> Barrier:
        return Barrier(
            checkpoint_id=int(message["checkpoint_id"]),
            directory=str(message["directory"]),
            shared=str(message["shared"]),
            final=bool(message.get("final", False)),
        )


@dataclass(slots=True)
class OutputStaging:
    """Output of exactly-once sinks, per split, waiting for the checkpoint that commits it.

    Rows produced after barrier N-1 are sealed into segment N at barrier N; when checkpoint N
    completes, every segment up to N is committed in one transaction per split and sink, with
    the marker (job, split, N). A checkpoint that fails leaves its segment for the next one.
    """

    open: dict[str, list[Record]] = field(default_factory=dict)
    segments: dict[int, dict[str, list[Record]]] = field(default_factory=dict)

    def add(self, split_id: str, rows: list[Record]) -> None:
        self.open.setdefault(split_id, []).extend(rows)

    def seal(self, checkpoint_id: int) -> None:
        if self.segments and checkpoint_id <= max(self.segments):
            raise ValueError(f"checkpoint id went backwards: {checkpoint_id} after {max(self.segments)}")
        self.segments[checkpoint_id] = self.open
        self.open = {}

    def seal_task(self, checkpoint_id: int, task_id: str) -> None:
        """Seals one task's rows into segment ``checkpoint_id`` (across worker processes each task
        snapshots when its own barriers are aligned, so its rows are sealed then, not all at once)."""
        if self.segments and checkpoint_id < max(self.segments):
            raise ValueError(f"checkpoint id went backwards: {checkpoint_id} after {max(self.segments)}")
        segment = self.segments.setdefault(checkpoint_id, {})
        rows = self.open.pop(task_id, None)
        if rows:
            segment.setdefault(task_id, []).extend(rows)

    def pending(self, split_id: str) -> list[list[Any]]:
        """Sealed, uncommitted segments of a split as ``[checkpoint_id, rows]`` pairs (for snapshots)."""
        return [[cid, seg[split_id]] for cid, seg in sorted(self.segments.items()) if seg.get(split_id)]

    def take_upto(self, checkpoint_id: int) -> dict[str, list[Record]]:
        """Removes and returns every sealed segment up to ``checkpoint_id``, merged per split in order."""
        out: dict[str, list[Record]] = {}
        for cid in sorted(c for c in self.segments if c <= checkpoint_id):
            for split_id, rows in self.segments.pop(cid).items():
                out.setdefault(split_id, []).extend(rows)
        return out

    def __len__(self) -> int:
        return sum(len(r) for r in self.open.values()) + sum(
            len(r) for seg in self.segments.values() for r in seg.values()
        )


async def snapshot_task(
    storage: CheckpointStorage,
    barrier: Barrier,
    split_id: str,
    position: Any,
    stores: dict[str, StateStore],
    pending_output: list[list[Any]],
) -> tuple[str, int, set[str]]:
    """Writes one task's snapshot.

    Returns its path, the bytes written (including new shared files) and the shared files it needs.
    """
    written = 0
    shared: set[str] = set()
    saved: dict[str, Any] = {}
    for name, store in stores.items():
        if isinstance(store, RocksDBStateStore):
            # next to the store, so RocksDB hard-links its files instead of copying them
            with tempfile.TemporaryDirectory(prefix=".chk-", dir=store.path.parent) as scratch:
                manifest, n = await snapshots.snapshot_rocksdb(
                    store, storage, barrier.shared, Path(scratch) / "c"
                )
            saved[name] = {"backend": "rocksdb", "manifest": manifest}
            written += n
            shared |= snapshots.referenced_shared_files(manifest)
        else:
            data = store.to_dict() if isinstance(store, MemoryStateStore) else dict(store.items())
            saved[name] = {"backend": "memory", "data": data}
    body = orjson.dumps(
        {
            "split_id": split_id,
            "checkpoint_id": barrier.checkpoint_id,
            "position": position,
            "stores": saved,
            "pending_output": pending_output,
        },
        option=orjson.OPT_NON_STR_KEYS,
    )
    path = f"{barrier.directory}/{split_id}.snap"
    await storage.write(path, body)
    return path, written + len(body), shared


@dataclass(slots=True)
class RestoredTask:
    position: Any
    stores: dict[str, StateStore]
    pending_output: list[list[Any]]


async def restore_task(storage: CheckpointStorage, path: str, state_dir: Path) -> RestoredTask:
    """Reads a task snapshot back: position, stores (RocksDB ones under ``state_dir``), staged output."""
    body = orjson.loads(await storage.read(path))
    stores: dict[str, StateStore] = {}
    for name, saved in body["stores"].items():
        if saved["backend"] == "rocksdb":
            stores[name] = await snapshots.restore_rocksdb(saved["manifest"], storage, state_dir / name)
        else:
            memory = MemoryStateStore()
            for key, value in saved["data"].items():
                memory.put(key, value)
            stores[name] = memory
    return RestoredTask(position=body["position"], stores=stores, pending_output=body["pending_output"])


async def read_manifest(storage: CheckpointStorage, directory: str) -> dict[str, Any]:
    manifest: dict[str, Any] = orjson.loads(await storage.read(f"{directory}/{MANIFEST}"))
    return manifest


def snapshot_directory(job_id: str, checkpoint_id: int, savepoint_id: str | None) -> str:
    """Where a snapshot goes, relative to the storage root (the layout above)."""
    return f"{job_id}/savepoints/{savepoint_id}" if savepoint_id else f"{job_id}/chk-{checkpoint_id}"


@dataclass(frozen=True, slots=True)
class SnapshotLocation:
    """A completed snapshot named by its URI, split into the storage root its paths are relative to
    and its directory there: what another job needs to start from it."""

    storage_uri: str
    directory: str
    job_id: str
    checkpoint_id: int
    savepoint_id: str | None

    @property
    def uri(self) -> str:
        """The location it was found at (``locate_snapshot``'s argument, normalized)."""
        return f"{self.storage_uri}/{self.directory}"


# How long locating a start point may take: a user waits for the answer (a submit, a restart).
LOCATE_TIMEOUT_S = 5.0


async def locate_snapshot(location: str, timeout_s: float = LOCATE_TIMEOUT_S) -> SnapshotLocation:
    """Reads the manifest at ``location`` (a savepoint's, or a retained checkpoint's, URI).

    Raises ``ValueError`` with the reason when there is no completed snapshot there, or when its
    storage does not answer within ``timeout_s``. Only reads: a missing S3 bucket is not created.
    """
    stripped = location.strip().rstrip("/")
    try:
        storage = storage_from_uri(stripped, timeout_s=timeout_s / 2)  # a connect and a read
        # the hard bound: name resolution, for one, is not covered by the client's timeouts
        manifest = orjson.loads(await asyncio.wait_for(storage.read(MANIFEST), timeout_s))
        directory = snapshot_directory(
            str(manifest["job_id"]), int(manifest["checkpoint_id"]), manifest.get("savepoint_id")
        )
    except FileNotFoundError:
        raise ValueError(f"no completed savepoint or checkpoint at {location} (no {MANIFEST})") from None
    except TimeoutError:
        raise ValueError(
            f"cannot read the snapshot at {location}: its storage did not answer within {timeout_s:g} s"
        ) from None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"cannot read the snapshot at {location}: {e}") from None
    if not stripped.endswith(f"/{directory}"):
        raise ValueError(f"{location} holds snapshot {directory}, which is not where it was written")
    return SnapshotLocation(
        storage_uri=stripped[: -len(directory) - 1],
        directory=directory,
        job_id=str(manifest["job_id"]),
        checkpoint_id=int(manifest["checkpoint_id"]),
        savepoint_id=manifest.get("savepoint_id"),
    )
