"""The checkpoint coordinator of one run: triggers barriers, collects acks, writes manifests.

A checkpoint (or savepoint) goes through these steps, in this order:

1. the id is taken from the job's counter and the counter is saved, so no id is ever used twice;
2. every worker gets a barrier; each snapshots its tasks at a batch boundary and acks;
3. when all acked (before the timeout), the manifest is written to checkpoint storage;
4. the snapshot record is saved in the job store: from now on the checkpoint is complete and is
   what a restart restores;
5. workers are told it completed; exactly-once sinks then commit the output sealed by it;
6. checkpoints beyond the retained count are deleted, with shared files no one references.

A checkpoint that fails or times out is aborted and counted; the job keeps running. When the run
ends (``close``), the checkpoint in flight fails and every trigger still queued behind it raises
``RunEndedError`` at once instead of sending a barrier nobody reads and waiting out its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from heliosdb_streaming.control.store import SnapshotRecord
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage
from heliosdb_streaming.runtime.checkpoint.tasks import MANIFEST, snapshot_directory

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0


class CheckpointFailedError(Exception):
    """A checkpoint or savepoint could not complete (a worker failed it, or it timed out)."""


class RunEndedError(CheckpointFailedError):
    """The run ended before this checkpoint or savepoint could start: no id was taken, nothing written."""


@dataclass(slots=True)
class PendingCheckpoint:
    record: SnapshotRecord
    final: bool
    stop_after: bool
    started: float
    acks: dict[int, dict[str, Any]] = field(default_factory=dict)
    done: asyncio.Future[SnapshotRecord] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class CheckpointCoordinator:
    """Owned by the control plane, one per run. Talks to the run's workers through ``send``."""

    def __init__(
        self,
        *,
        job_id: str,
        parallelism: int,
        storage: CheckpointStorage,
        next_id: Callable[[], int],
        send: Callable[[dict[str, Any]], Any],
        on_complete: Callable[[SnapshotRecord], None],
        on_failed: Callable[[SnapshotRecord, str], None],
        retained: int,
        retained_snapshots: Callable[[], list[SnapshotRecord]],
        forget: Callable[[SnapshotRecord], None],
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.job_id = job_id
        self.parallelism = parallelism
        self.storage = storage
        self._next_id = next_id
        self._send = send
        self._on_complete = on_complete
        self._on_failed = on_failed
        self._retained = retained
        self._snapshots = retained_snapshots
        self._forget = forget
        self.timeout_s = timeout_s
        self.pending: PendingCheckpoint | None = None
        self.drained: set[int] = set()
        self._cleaned_below: int | None = None  # checkpoint directories below this id are gone
        self._lock = asyncio.Lock()
        self.ended: str | None = None  # why the run ended (``close``); no trigger starts after it

    # ------------------------------------------------------------------------------ triggers

    async def periodic(self, interval_s: float, paused: Callable[[], bool]) -> None:
        """Triggers a checkpoint every ``interval_s`` until cancelled; failures are counted, not raised."""
        while True:
            await asyncio.sleep(interval_s)
            if len(self.drained) == self.parallelism:
                return  # the final checkpoint takes over
            with contextlib.suppress(CheckpointFailedError):
                await self.trigger("checkpoint")

    async def trigger(
        self,
        kind: str,
        *,
        description: str | None = None,
        final: bool = False,
        stop_after: bool = False,
        periodic: bool = False,
    ) -> SnapshotRecord:
        """Runs one checkpoint or savepoint to completion; raises CheckpointFailedError.

        Triggers run one at a time, in order; one queued behind another when the run ends raises
        ``RunEndedError`` as soon as it gets its turn.
        """
        if self.ended is not None:
            raise RunEndedError(self.ended)
        async with self._lock:
            if self.ended is not None:
                raise RunEndedError(self.ended)
            checkpoint_id = self._next_id()
            savepoint_id = f"savepoint-{uuid.uuid4()}" if kind == "savepoint" else None
            directory = snapshot_directory(self.job_id, checkpoint_id, savepoint_id)
            shared = f"{directory}/shared" if savepoint_id else f"{self.job_id}/shared"
            record = SnapshotRecord(
                job_id=self.job_id,
                checkpoint_id=checkpoint_id,
                kind=kind,
                status="in_progress",
                timestamp=datetime.now(UTC),
                directory=directory,
                location=self.storage.uri(directory),
                savepoint_id=savepoint_id,
                description=description,
                periodic=periodic,
            )
            pending = PendingCheckpoint(
                record=record, final=final, stop_after=stop_after, started=time.monotonic()
            )
            self.pending = pending
            await self._send(
                {
                    "type": "checkpoint",
                    "checkpoint_id": checkpoint_id,
                    "directory": directory,
                    "shared": shared,
                    "final": final,
                }
            )
            try:
                return await asyncio.wait_for(asyncio.shield(pending.done), self.timeout_s)
            except TimeoutError:
                missing = sorted(set(range(self.parallelism)) - set(pending.acks))
                reason = f"timed out after {self.timeout_s:g}s waiting for worker(s) {missing}"
                self._fail(pending, reason)
                raise CheckpointFailedError(reason) from None
            finally:
                self.pending = None

    def close(self, reason: str) -> None:
        """The run's workers are gone: fails the checkpoint in flight and every one queued behind it."""
        self.ended = reason
        if self.pending is not None:
            self._fail(self.pending, reason)

    # ------------------------------------------------------------------------------ worker messages

    async def on_ack(self, index: int, message: dict[str, Any]) -> None:
        pending = self.pending
        if pending is None or int(message.get("checkpoint_id", -1)) != pending.record.checkpoint_id:
            return  # a late ack of an aborted checkpoint
        pending.acks[index] = message
        if len(pending.acks) < self.parallelism or pending.done.done():
            return
        try:
            await self._complete(pending)
        except Exception as e:  # storage errors: the checkpoint fails, the job goes on
            self._fail(pending, f"could not write the manifest: {e}")

    def on_worker_failed(self, index: int, message: dict[str, Any]) -> None:
        pending = self.pending
        if pending is not None and int(message.get("checkpoint_id", -1)) == pending.record.checkpoint_id:
            self._fail(pending, f"worker {index}: {message.get('error')}")

    def on_drained(self, index: int) -> bool:
        """Records that a worker read all its input; True when every worker has."""
        self.drained.add(index)
        return len(self.drained) == self.parallelism

    # ------------------------------------------------------------------------------ completion

    async def _complete(self, pending: PendingCheckpoint) -> None:
        record = pending.record
        tasks: dict[str, Any] = {}
        shared: set[str] = set()
        size = 0
        for ack in pending.acks.values():
            tasks.update(ack.get("tasks", {}))
            size += int(ack.get("bytes", 0))
            shared.update(ack.get("shared", []))
        record.duration_ms = int((time.monotonic() - pending.started) * 1000)
        record.size_bytes = size
        record.shared_files = sorted(shared)
        manifest = {
            "checkpoint_id": record.checkpoint_id,
            "job_id": record.job_id,
            "kind": record.kind,
            "savepoint_id": record.savepoint_id,
            "description": record.description,
            "timestamp": record.timestamp.isoformat(),
            "parallelism": self.parallelism,
            "size_bytes": size,
            "tasks": tasks,
            # what a control plane that lost its job store (a new job manager) needs to keep them
            "shared_files": record.shared_files,
        }
        await self.storage.write(f"{record.directory}/{MANIFEST}", orjson.dumps(manifest))
        record.status = "completed"
        self._on_complete(record)
        await self._send(
            {
                "type": "checkpoint_complete",
                "checkpoint_id": record.checkpoint_id,
                "final": pending.final,
                "stop": pending.stop_after,
            }
        )
        if not pending.done.done():
            pending.done.set_result(record)
        await self._retain()

    def _fail(self, pending: PendingCheckpoint, reason: str) -> None:
        if pending.done.done():
            return
        pending.record.status = "failed"
        pending.record.duration_ms = int((time.monotonic() - pending.started) * 1000)
        self._on_failed(pending.record, reason)
        pending.done.set_exception(CheckpointFailedError(reason))
        pending.done.exception()  # retrieved here so an unawaited failure is not reported as lost

    async def _retain(self) -> None:
        """Deletes completed checkpoints beyond the newest ``retained``, the files of failed or aborted
        checkpoints older than those, and shared files no retained checkpoint references."""
        completed = [s for s in self._snapshots() if s.kind == "checkpoint" and s.status == "completed"]
        completed.sort(key=lambda s: s.checkpoint_id)
        expired = completed[: -self._retained] if len(completed) > self._retained else []
        for snapshot in expired:
            await self.storage.delete_prefix(snapshot.directory)
            self._forget(snapshot)
        kept = completed[-self._retained :]
        oldest_kept = kept[0].checkpoint_id if kept else 0
        newest_kept = kept[-1].checkpoint_id if kept else 0
        if self._cleaned_below is None:  # a new run: look back a little for what a crash left behind
            self._cleaned_below = max(oldest_kept - 50, 1)
        # Failed ones between two kept checkpoints go too (a worker killed mid-checkpoint leaves one
        # there); nothing newer than the newest completed one is touched: it may be in flight.
        spared = {s.checkpoint_id for s in self._snapshots() if s.kind == "savepoint"}
        spared.update(s.checkpoint_id for s in kept)
        for checkpoint_id in range(self._cleaned_below, newest_kept):
            if checkpoint_id not in spared:  # failed, timed out, or cut short by a crash
                await self.storage.delete_prefix(f"{self.job_id}/chk-{checkpoint_id}")
        self._cleaned_below = max(self._cleaned_below, oldest_kept)
        if expired:
            keep = {f for s in completed[-self._retained :] for f in s.shared_files}
            prefix = f"{self.job_id}/shared"
            for path in await self.storage.list(prefix):
                if path not in keep:
                    await self.storage.delete(path)
