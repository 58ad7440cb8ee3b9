"""The worker's part in a checkpoint: barriers in, task snapshots and acks out, exactly-once commits.

It sits apart from the data path because its ordering is the correctness of a restart and must stay
readable on its own (see ``checkpoint``'s numbered steps). The control channel queues barriers and
completions here as they arrive; the worker's processing loop calls ``handle_messages`` between two
batches, so every snapshot sees each task at a batch boundary. Output of exactly-once sinks waits in
``OutputStaging`` until the checkpoint whose segment holds it completes, and is then committed in one
transaction per split and sink, marked (job, split@sink, checkpoint id) so a replay commits it once.
On a restore it reads the manifest, restores task snapshots and commits the restored pending output.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage
from heliosdb_streaming.runtime.checkpoint.tasks import (
    Barrier,
    OutputStaging,
    RestoredTask,
    read_manifest,
    restore_task,
    snapshot_task,
)
from heliosdb_streaming.runtime.contracts import Record, SinkWriter
from heliosdb_streaming.runtime.exchange.kafka_exchange import KafkaExchange
from heliosdb_streaming.runtime.stages import StageRunner, StageTask
from heliosdb_streaming.runtime.task import Task, before_snapshot

logger = logging.getLogger("heliosdb_streaming.worker")  # one logger for all parts of a worker

ALIGNMENT_TIMEOUT_S = 300.0
"""How long a task waits for the barriers of every origin: past it the checkpoint fails (a worker
that died makes its run restart long before)."""


def is_transactional(sink: SinkWriter) -> bool:
    """An exactly-once sink: its output waits for the checkpoint that commits it."""
    return bool(getattr(sink, "exactly_once", False)) and hasattr(sink, "write_transaction")


class CheckpointParticipant:
    """Snapshots a worker's tasks at barriers and commits their staged output on completion.

    ``tasks`` and ``sinks`` are the data path's own dict and list (filled in place when the worker
    opens), ``flush`` its ``flush_sinks``, ``stop`` its ``stop``; ``send`` writes to the control channel.
    """

    def __init__(
        self,
        *,
        job_id: str,
        storage: CheckpointStorage | None,
        restore_from: str | None,
        restore_storage: CheckpointStorage | None,
        tasks: dict[str, Task],
        sinks: list[SinkWriter],
        stage_tasks: dict[str, StageTask] | None = None,
        staging: OutputStaging,
        flush: Callable[[], Awaitable[None]],
        stop: Callable[[], None],
        send: Callable[[dict[str, Any]], Awaitable[None]],
        remote: Callable[[], tuple[StageRunner, KafkaExchange] | None] | None = None,
        pump: Callable[[], Awaitable[None]] | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        self.job_id = job_id
        self.storage = storage
        self.restore_from = restore_from
        self.restore_storage = restore_storage
        self.staging = staging
        self._tasks = tasks
        self._stage_tasks: dict[str, StageTask] = {} if stage_tasks is None else stage_tasks
        self._sinks = sinks
        self._flush = flush
        self._stop = stop
        self._send = send
        # across worker processes: the stages and their exchange (once open), and how to let the
        # later stages take what arrived and write their output (to sinks or staging)
        self._remote = remote
        self._pump = pump
        self._stopping = stopping
        self._barriers: deque[Barrier] = deque()
        self._completed: deque[tuple[int, bool, bool]] = deque()
        self.final_committed = False
        self.manifest: dict[str, Any] | None = None
        self.restored_checkpoint: int | None = None

    # ------------------------------------------------------------------------------ restore

    async def restore_manifest(self) -> dict[str, Any] | None:
        """The manifest of the checkpoint or savepoint to start from, if any."""
        if not self.restore_from or self.restore_storage is None:
            return None
        manifest = await read_manifest(self.restore_storage, self.restore_from)
        self.restored_checkpoint = int(manifest["checkpoint_id"])
        self.manifest = manifest
        return manifest

    async def restore_task(self, split_id: str, state_dir: Path) -> RestoredTask | None:
        """The snapshot of one split in the restored manifest, restored into ``state_dir``, if it has one."""
        snapshot_path = (self.manifest or {}).get("tasks", {}).get(split_id, {}).get("path")
        if snapshot_path and self.restore_storage is not None:
            return await restore_task(self.restore_storage, snapshot_path, state_dir)
        return None

    def snapshot_task_ids(self) -> list[str]:
        """The ids of the tasks in the restored snapshot (none without one)."""
        return sorted((self.manifest or {}).get("tasks", {}))

    async def commit_restored(self, restored: dict[str, RestoredTask]) -> None:
        """Commits the output staged before the restored checkpoint completed (the sinks are open).

        It may not be committed yet; it belongs to the job that took the snapshot, so its marker is
        that job's.
        """
        if self.manifest is None or self.restored_checkpoint is None:
            return
        owner = str(self.manifest.get("job_id") or self.job_id)
        for split_id, task_state in restored.items():
            rows = [row for _cid, segment in task_state.pending_output for row in segment]
            await self.commit(split_id, rows, self.restored_checkpoint, job_id=owner)

    # ------------------------------------------------------------------------------ messages

    @property
    def has_messages(self) -> bool:
        """A barrier or a completion waits for ``handle_messages``."""
        return bool(self._barriers or self._completed)

    def on_barrier(self, message: dict[str, Any]) -> None:
        self._barriers.append(Barrier.from_message(message))

    def on_complete(self, message: dict[str, Any]) -> None:
        self._completed.append(
            (int(message["checkpoint_id"]), bool(message.get("final")), bool(message.get("stop")))
        )

    async def handle_messages(self) -> None:
        """Commits completed checkpoints, then takes the snapshots of pending barriers, in order."""
        while self._completed:
            checkpoint_id, final, stop = self._completed.popleft()
            for split_id, rows in self.staging.take_upto(checkpoint_id).items():
                await self.commit(split_id, rows, checkpoint_id)
            if final:
                self.final_committed = True
            if stop:  # stop-with-savepoint: nothing runs past the savepoint
                self._stop()
        while self._barriers:
            await self.checkpoint(self._barriers.popleft())

    async def checkpoint(self, barrier: Barrier) -> None:
        """Snapshots every task at this batch boundary and acknowledges to the coordinator.

        1. everything processed so far goes to the sinks: at-least-once sinks are flushed, the
           exactly-once sinks' rows are sealed into the segment of this checkpoint;
        2. each task's steps write what they buffer to their stores (``before_snapshot``: the
           write-back caches of process steps), then the task writes position + stores + its
           uncommitted segments to checkpoint storage (the later stages' key-group tasks too: in
           process, routing is synchronous, so nothing is in flight between stages at a batch boundary);
        3. the ack lists the task snapshots; the coordinator writes the manifest when all acked.
        """
        assert self.storage is not None
        started = time.monotonic()
        remote = self._remote() if self._remote is not None else None
        if remote is not None:
            await self._checkpoint_across(barrier, *remote, started)
            return
        try:
            await self._flush()
            self.staging.seal(barrier.checkpoint_id)
            tasks: dict[str, dict[str, Any]] = {}
            shared: set[str] = set()
            total = 0
            every: list[tuple[str, Task | StageTask]] = [
                *self._tasks.items(),
                *self._stage_tasks.items(),
            ]
            for split_id, task in every:
                chains = task.chains.values() if isinstance(task, StageTask) else [task.chain]
                for chain in chains:
                    before_snapshot(chain)
                path, size, needs = await snapshot_task(
                    self.storage,
                    barrier,
                    split_id,
                    task.position,
                    task.stores,
                    self.staging.pending(split_id),
                )
                tasks[split_id] = {"path": path, "bytes": size, "position": task.position}
                shared |= needs
                total += size
        except Exception as e:
            logger.warning("checkpoint %d failed: %s", barrier.checkpoint_id, e, extra={"task_id": None})
            await self._send(
                {"type": "checkpoint_failed", "checkpoint_id": barrier.checkpoint_id, "error": str(e)}
            )
            return
        await self._send(
            {
                "type": "ack",
                "checkpoint_id": barrier.checkpoint_id,
                "tasks": tasks,
                "shared": sorted(shared),
                "bytes": total,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            }
        )

    async def _snapshot(
        self, barrier: Barrier, task_id: str, task: Task | StageTask
    ) -> tuple[dict[str, Any], set[str], int]:
        assert self.storage is not None
        chains = task.chains.values() if isinstance(task, StageTask) else [task.chain]
        for chain in chains:
            before_snapshot(chain)
        path, size, needs = await snapshot_task(
            self.storage, barrier, task_id, task.position, task.stores, self.staging.pending(task_id)
        )
        return {"path": path, "bytes": size, "position": task.position}, needs, size

    async def _checkpoint_across(
        self, barrier: Barrier, runner: StageRunner, exchange: KafkaExchange, started: float
    ) -> None:
        """Checkpoint N when the stages cross worker processes (``kafka_exchange``'s order):

        1. everything processed so far goes out (sinks, exchange); each split task (stage 0) is
           snapshotted, then its barrier N goes to every key group of stage 1, after its records;
        2. stage by stage, each of this worker's key-group tasks keeps taking what arrives (that
           output belongs to N) until the barriers of all its origins are aligned; it is then
           snapshotted with its read offsets and its own sealed output, its input released, and its
           barrier sent on to the next stage. Every worker sends its barriers before it waits for any
           alignment, so workers never wait on each other in a cycle;
        3. the ack lists the snapshots.
        """
        checkpoint_id = barrier.checkpoint_id
        tasks: dict[str, dict[str, Any]] = {}
        shared: set[str] = set()
        total = 0
        try:
            await self._flush()
            for split_id, task in self._tasks.items():
                self.staging.seal_task(checkpoint_id, split_id)
                tasks[split_id], needs, size = await self._snapshot(barrier, split_id, task)
                shared |= needs
                total += size
                if runner.last >= 1:
                    exchange.send_barrier(1, split_id, checkpoint_id)
            await exchange.flush()
            for stage in range(1, runner.last + 1):
                for stage_task in runner.tasks[stage]:
                    await self._align(exchange, stage, stage_task, checkpoint_id)
                    stage_task.input_position = exchange.snapshot(stage, stage_task.groups)
                    if self._pump is not None:
                        await self._pump()  # the output it made before the barriers, to its segment
                    self.staging.seal_task(checkpoint_id, stage_task.task_id)
                    tasks[stage_task.task_id], needs, size = await self._snapshot(
                        barrier, stage_task.task_id, stage_task
                    )
                    shared |= needs
                    total += size
                    exchange.release(stage, stage_task.groups, checkpoint_id)
                    if stage < runner.last:
                        exchange.send_barrier(stage + 1, stage_task.task_id, checkpoint_id)
                await exchange.flush()
            await self._flush()
        except Exception as e:
            logger.warning("checkpoint %d failed: %s", checkpoint_id, e, extra={"task_id": None})
            await self._send({"type": "checkpoint_failed", "checkpoint_id": checkpoint_id, "error": str(e)})
            return
        await self._send(
            {
                "type": "ack",
                "checkpoint_id": checkpoint_id,
                "tasks": tasks,
                "shared": sorted(shared),
                "bytes": total,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            }
        )

    async def _align(self, exchange: KafkaExchange, stage: int, task: StageTask, checkpoint_id: int) -> None:
        """Processes the task's input until its barriers of ``checkpoint_id`` are aligned. An
        alignment left over from an earlier checkpoint that failed here is released first."""
        deadline = time.monotonic() + ALIGNMENT_TIMEOUT_S
        while True:
            if self._pump is not None:
                await self._pump()
            aligned = exchange.aligned(stage, task.groups)
            if aligned == checkpoint_id:
                return
            if aligned is not None and aligned < checkpoint_id:
                exchange.release(stage, task.groups, aligned)
                continue
            if aligned is not None:
                raise RuntimeError(
                    f"task {task.task_id} aligned at checkpoint {aligned}, not {checkpoint_id}"
                )
            if self._stopping is not None and self._stopping():
                raise RuntimeError(
                    f"task {task.task_id}: the worker stops; checkpoint {checkpoint_id} abandoned"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"task {task.task_id}: barriers of checkpoint {checkpoint_id} not aligned within "
                    f"{ALIGNMENT_TIMEOUT_S:.0f}s"
                )
            await exchange.wait(stage, task.groups, 0.05)

    async def commit(
        self, split_id: str, rows: list[Record], checkpoint_id: int, job_id: str | None = None
    ) -> None:
        """Commits staged rows of one split to every exactly-once sink, once per checkpoint id."""
        if not rows:
            return
        marker_job = job_id or self.job_id
        for k, sink in enumerate(self._sinks):
            if is_transactional(sink):
                await sink.write_transaction(rows, (marker_job, f"{split_id}@sink{k}", checkpoint_id))  # type: ignore[attr-defined]
