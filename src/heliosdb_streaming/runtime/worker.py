"""A worker process: runs the tasks (splits + chains) assigned to it and reports to its control plane.

Started as ``python -m heliosdb_streaming.runtime.worker --job-dir DIR --index I --attempt A --control
HOST:PORT``. The job config is ``DIR/job.json`` (or ``--config FILE``). Worker ``I`` of ``P`` owns the
splits whose position in the sorted split list is ``I`` modulo ``P``, so the assignment is deterministic
and a rescale moves whole tasks.

Data path: source poll loops -> bounded queue (backpressure is measured where ``put`` blocks) ->
one processing loop running each batch through its task's chain -> sinks. Sinks are flushed as soon as
the sources have nothing more to give right now (so a moderate rate is not held back), and at least
every ``FLUSH_INTERVAL_S`` at full speed; source positions are committed at most every
``FLUSH_INTERVAL_S``. Latency is recorded when the batch's output is flushed.

Heartbeats (counters, CPU, memory, connector problems) come from a thread of their own, so a step
that keeps the event loop busy for a long time does not make the worker look dead or idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from heliosdb_streaming.model.config import JobConfig, OnErrorPolicy, StateBackendType
from heliosdb_streaming.runtime import graph
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage, storage_from_uri
from heliosdb_streaming.runtime.checkpoint.tasks import (
    Barrier,
    OutputStaging,
    RestoredTask,
    read_manifest,
    restore_task,
    snapshot_task,
)
from heliosdb_streaming.runtime.contracts import (
    Batch,
    Record,
    SinkWriter,
    SourceReader,
    Split,
    SplitBatch,
    StateStore,
)
from heliosdb_streaming.runtime.histogram import LatencyHistogram
from heliosdb_streaming.runtime.logformat import LEVELS, JsonLineFormatter, MaskingFormatter
from heliosdb_streaming.runtime.protocol import Channel, WorkerChannel
from heliosdb_streaming.runtime.rotation import (
    DEFAULT_BACKUPS,
    DEFAULT_MAX_BYTES,
    RotatingFile,
    RotatingTextStream,
)
from heliosdb_streaming.runtime.state.memory import MemoryStateStore, StateBudget
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore

logger = logging.getLogger("heliosdb_streaming.worker")

POLL_MAX_RECORDS = 4096
QUEUE_BATCHES = 4
FLUSH_INTERVAL_S = 0.05
TIMER_INTERVAL_S = 0.2
HEARTBEAT_INTERVAL_S = 1.0
ERROR_LOG_LIMIT_PER_MIN = 20


class TaskFailure(Exception):
    """A task hit a record error under ``on_error: fail``, or a sink could not write."""


@dataclass(slots=True)
class Task:
    """One split with its chain of transformations and its position in the source."""

    split: Split
    reader: SourceReader
    chain: list[Any]
    stores: dict[str, StateStore] = field(default_factory=dict)
    position: Any = None
    finished: bool = False
    events_in: int = 0
    events_out: int = 0


@dataclass(slots=True)
class Counters:
    events_in: int = 0
    events_out: int = 0
    errors: int = 0
    late_dropped: int = 0
    backpressure_events: int = 0
    backpressure_ms: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class Worker:
    def __init__(
        self,
        config: JobConfig,
        *,
        job_id: str,
        index: int,
        attempt: int,
        job_dir: Path,
        channel: WorkerChannel | None,
        storage: CheckpointStorage | None = None,
        restore_from: str | None = None,
        restore_storage: CheckpointStorage | None = None,
        metrics: bool = True,
    ) -> None:
        self.config = config
        # off only to measure what metrics cost (benchmarks.metrics_cost): no latency, no heartbeats
        self.metrics = metrics
        self.job_id = job_id
        self.index = index
        self.attempt = attempt
        self.job_dir = job_dir
        self.channel = channel
        self.counters = Counters()
        self.tasks: dict[str, Task] = {}
        self.readers: list[SourceReader] = []
        self.sinks: list[SinkWriter] = []
        self.queue: asyncio.Queue[SplitBatch] = asyncio.Queue(QUEUE_BATCHES)
        self.running = asyncio.Event()
        self.running.set()
        self.stopping = asyncio.Event()
        self._pending_out: list[tuple[str, Batch]] = []
        self._pending_latency: list[tuple[float, int]] = []
        self._last_flush = self._last_commit = time.monotonic()
        self._errors_logged: deque[float] = deque()
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        self._stores: list[StateStore] = []
        self._budgets: dict[str, StateBudget] = {}
        self.storage = storage
        self.restore_from = restore_from
        # where ``restore_from`` lives: the job's own storage, or another job's (a job started from a
        # savepoint of another job)
        self.restore_storage = restore_storage or storage
        # exactly-once sinks need a coordinator that completes checkpoints; without one (a benchmark
        # running a worker in-process) every sink is written directly, at least once
        self.exactly_once = storage is not None and channel is not None
        self.staging = OutputStaging()
        self._barriers: deque[Barrier] = deque()
        self._completed: deque[tuple[int, bool, bool]] = deque()
        self._final_committed = False
        self._restored_checkpoint: int | None = None
        self._heartbeats: HeartbeatThread | None = None

    # ------------------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Runs to completion; the exit code is 0 when finished or stopped, 1 on failure."""
        control = asyncio.create_task(self._control_loop()) if self.channel else None
        if self.channel is not None and self.metrics:
            self._heartbeats = HeartbeatThread(self._heartbeat_message, self.channel, HEARTBEAT_INTERVAL_S)
            self._heartbeats.start()
        try:
            await self._open()
            outcome = await self._process_until_done()
            await self._flush_sinks()
            logger.info(
                "worker %d %s: %d events in, %d out, %d errors",
                self.index,
                outcome,
                self.counters.events_in,
                self.counters.events_out,
                self.counters.errors,
                extra={"task_id": None},
            )
            await self._report(outcome)
            return 0
        except asyncio.CancelledError:
            return 3
        except Exception as e:
            logger.error("worker %d failed: %s", self.index, e, extra={"task_id": None})
            logger.debug("%s", traceback.format_exc())
            await self._report("failed", error=f"{type(e).__name__}: {e}")
            return 1
        finally:
            self._stop_heartbeats()
            if control:
                control.cancel()
            await self._close()

    async def _open(self) -> None:
        manifest = await self._restore_manifest()
        restored: dict[str, RestoredTask] = {}
        self.readers = graph.build_source_readers(self.config)
        parallelism = self.config.parallelism
        for reader in self.readers:
            splits = await reader.discover_splits()
            assigned = [s for k, s in enumerate(splits) if k % parallelism == self.index]
            positions: dict[str, Any] = {}
            for split in assigned:
                stores: dict[str, StateStore] = {}
                snapshot_path = (manifest or {}).get("tasks", {}).get(split.split_id, {}).get("path")
                if snapshot_path and self.restore_storage is not None:
                    state_dir = self.job_dir / "state" / f"attempt-{self.attempt}" / split.split_id
                    task_state = await restore_task(self.restore_storage, snapshot_path, state_dir)
                    restored[split.split_id] = task_state
                    stores = dict(task_state.stores)
                    self._stores.extend(stores.values())
                    if task_state.position is not None:
                        positions[split.split_id] = task_state.position
                task = Task(split=split, reader=reader, chain=[], stores=stores)
                task.position = positions.get(split.split_id)
                task.chain = graph.build_chain(self.config, functools.partial(self._store, task))
                self.tasks[split.split_id] = task
            await reader.open(assigned, positions)
            logger.info(
                "source %d: %d splits, %d assigned to worker %d%s",
                reader_index(reader, self.readers),
                len(splits),
                len(assigned),
                self.index,
                f", {len(positions)} restored from checkpoint {self._restored_checkpoint}"
                if manifest
                else "",
                extra={"task_id": "task-1"},
            )
        dropped = {name for task in restored.values() for name in task.stores} - graph.store_names(
            self.config
        )
        if dropped:  # a savepoint of a job whose pipeline differs (an upgrade): say what is not restored
            logger.warning(
                "the snapshot holds state of step(s) %s that this job does not have (by position and "
                "type); that state is not restored",
                ", ".join(sorted(dropped)),
                extra={"task_id": None},
            )
        self.sinks = graph.build_sinks(self.config)
        for sink in self.sinks:
            await sink.open()
        if manifest is not None and self._restored_checkpoint is not None:
            # output staged before the restored checkpoint completed may not be committed yet; it
            # belongs to the job that took the snapshot, so its marker is that job's
            owner = str(manifest.get("job_id") or self.job_id)
            for split_id, task_state in restored.items():
                rows = [row for _cid, segment in task_state.pending_output for row in segment]
                await self._commit(split_id, rows, self._restored_checkpoint, job_id=owner)

    async def _restore_manifest(self) -> dict[str, Any] | None:
        if not self.restore_from or self.restore_storage is None:
            return None
        manifest = await read_manifest(self.restore_storage, self.restore_from)
        self._restored_checkpoint = int(manifest["checkpoint_id"])
        return manifest

    def _store(self, task: Task, name: str) -> StateStore:
        """The store named ``name`` of a task: the restored one if there is one, else a new one."""
        store = task.stores.get(name)
        if store is not None:
            return self._limited(task, store)
        if self.config.state_backend == StateBackendType.ROCKSDB:
            path = self.job_dir / "state" / f"attempt-{self.attempt}" / task.split.split_id / name
            store = RocksDBStateStore(path)
        else:
            store = MemoryStateStore()
        task.stores[name] = store
        self._stores.append(store)
        return self._limited(task, store)

    def _limited(self, task: Task, store: StateStore) -> StateStore:
        """A memory store counts against its task's ``max_state_mb`` (all stores of the task together)."""
        if isinstance(store, MemoryStateStore):
            budget = self._budgets.setdefault(
                task.split.split_id, StateBudget(task.split.split_id, self.config.max_state_mb)
            )
            store.limit(budget)
        return store

    async def _close(self) -> None:
        for reader in self.readers:
            with contextlib.suppress(Exception):
                await reader.close()
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                await sink.close()
        for store in self._stores:
            close = getattr(store, "close", None)
            if close:
                with contextlib.suppress(Exception):
                    close()

    def _stop_heartbeats(self) -> None:
        heartbeats, self._heartbeats = self._heartbeats, None
        if heartbeats is not None:
            heartbeats.stop()

    async def _report(self, outcome: str, error: str | None = None) -> None:
        self._stop_heartbeats()  # the last heartbeat goes right before the outcome, none after it
        if self.channel is None or self.channel.closed:
            return
        with contextlib.suppress(ConnectionError, OSError):
            await self.channel.send(self._heartbeat_message())
            await self.channel.send({"type": outcome, "error": error})

    # ------------------------------------------------------------------------------ data path

    async def _process_until_done(self) -> str:
        """Processes batches until the job is done here ('finished') or a stop arrives ('stopped').

        Barriers and checkpoint completions are handled between batches, so every snapshot sees
        each task at a batch boundary. Once every split is exhausted the worker reports 'drained'
        and, under a coordinator, waits for the final checkpoint before it finishes.
        """
        pollers = [asyncio.create_task(self._poll_loop(r)) for r in self.readers if self._has_tasks(r)]
        if not self.tasks:
            logger.info("worker %d has no splits to read", self.index, extra={"task_id": None})
        last_timer = time.monotonic()
        drained = False
        try:
            while True:
                if self.stopping.is_set():
                    return "stopped"
                await self._handle_checkpoint_messages()
                if not drained and self._all_finished() and self.queue.empty():
                    self._end_of_input()
                    drained = True
                    await self._flush_sinks()
                    if not self.exactly_once:
                        return "finished"
                    await self._send({"type": "drained"})
                if drained and self._final_committed:
                    return "finished"
                for p in pollers:
                    if p.done() and p.exception() is not None:
                        raise p.exception()  # type: ignore[misc]
                batch: SplitBatch | None = None
                if not drained:
                    with contextlib.suppress(TimeoutError):
                        batch = await asyncio.wait_for(self.queue.get(), timeout=TIMER_INTERVAL_S)
                else:
                    await asyncio.sleep(0.01)
                if batch is not None:
                    self._process_batch(batch)
                    while not self.queue.empty():  # and what else is here (at most QUEUE_BATCHES):
                        self._process_batch(self.queue.get_nowait())  # then "nothing more" is true
                now = time.monotonic()
                if now - last_timer >= TIMER_INTERVAL_S and not drained:
                    last_timer = now
                    self._on_time()
                if now - self._last_flush >= FLUSH_INTERVAL_S:
                    await self._flush_sinks()
                elif self.queue.empty() and (self._pending_out or self._pending_latency):
                    await self._flush_sinks()  # nothing more to read right now: do not sit on events
                elif self._pending_out:
                    await self._write_pending()
        finally:
            for p in pollers:
                p.cancel()

    async def _handle_checkpoint_messages(self) -> None:
        while self._completed:
            checkpoint_id, final, stop = self._completed.popleft()
            for split_id, rows in self.staging.take_upto(checkpoint_id).items():
                await self._commit(split_id, rows, checkpoint_id)
            if final:
                self._final_committed = True
            if stop:  # stop-with-savepoint: nothing runs past the savepoint
                self.stopping.set()
                self.running.set()
        while self._barriers:
            await self._checkpoint(self._barriers.popleft())

    async def _checkpoint(self, barrier: Barrier) -> None:
        """Snapshots every task at this batch boundary and acknowledges to the coordinator.

        1. everything processed so far goes to the sinks: at-least-once sinks are flushed, the
           exactly-once sinks' rows are sealed into the segment of this checkpoint;
        2. each task writes position + stores + its uncommitted segments to checkpoint storage;
        3. the ack lists the task snapshots; the coordinator writes the manifest when all acked.
        """
        assert self.storage is not None
        started = time.monotonic()
        try:
            await self._flush_sinks()
            self.staging.seal(barrier.checkpoint_id)
            tasks: dict[str, dict[str, Any]] = {}
            shared: set[str] = set()
            total = 0
            for split_id, task in self.tasks.items():
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

    async def _commit(
        self, split_id: str, rows: list[Record], checkpoint_id: int, job_id: str | None = None
    ) -> None:
        """Commits staged rows of one split to every exactly-once sink, once per checkpoint id."""
        if not rows:
            return
        marker_job = job_id or self.job_id
        for k, sink in enumerate(self.sinks):
            if _is_transactional(sink):
                await sink.write_transaction(rows, (marker_job, f"{split_id}@sink{k}", checkpoint_id))  # type: ignore[attr-defined]

    async def _send(self, message: dict[str, Any]) -> None:
        if self.channel is None:
            return
        with contextlib.suppress(ConnectionError, OSError):
            await self.channel.send(message)

    def _has_tasks(self, reader: SourceReader) -> bool:
        return any(t.reader is reader for t in self.tasks.values())

    def _all_finished(self) -> bool:
        return all(t.finished for t in self.tasks.values())

    async def _poll_loop(self, reader: SourceReader) -> None:
        while not self.stopping.is_set():
            await self.running.wait()
            batches = await reader.poll(POLL_MAX_RECORDS, 0.1)
            self._drain_decode_errors(reader)
            for b in batches:
                if self.queue.full():
                    blocked_from = time.monotonic()
                    self.counters.backpressure_events += 1
                    await self.queue.put(b)
                    self.counters.backpressure_ms += (time.monotonic() - blocked_from) * 1000
                else:
                    self.queue.put_nowait(b)
            if self._reader_done(reader, batches):
                return

    def _reader_done(self, reader: SourceReader, batches: list[SplitBatch]) -> bool:
        finished = {b.split_id for b in batches if b.finished}
        return all(
            t.finished or t.split.split_id in finished for t in self.tasks.values() if t.reader is reader
        )

    def _drain_decode_errors(self, reader: SourceReader) -> None:
        errors = getattr(reader, "decode_errors", None)
        if not errors:
            return
        for split_id, offset, message in errors:
            self.counters.errors += 1
            self._log_record_error(f"undecodable record at {split_id} offset {offset}: {message}", split_id)
            if self.config.on_error == OnErrorPolicy.FAIL:
                raise TaskFailure(f"undecodable record at {split_id} offset {offset}: {message}")
        errors.clear()

    def _process_batch(self, batch: SplitBatch) -> None:
        task = self.tasks[batch.split_id]
        records = batch.records
        n = len(records)
        task.events_in += n
        self.counters.events_in += n
        errors: list[tuple[Record, Exception]] = []
        out = run_chain(task.chain, records, errors, 0)
        self._handle_errors(errors, task, batch.position)
        task.position = batch.position
        if batch.finished:
            task.finished = True
        if out:
            self._pending_out.append((batch.split_id, out))
        if self.metrics:
            self._pending_latency.append((batch.ingest_ms, n))

    def _on_time(self) -> None:
        now_ms = int(time.time() * 1000)
        for task in self.tasks.values():
            for i, step in enumerate(task.chain):
                emitted = step.on_time(now_ms)
                if emitted:
                    errors: list[tuple[Record, Exception]] = []
                    out = run_chain(task.chain, emitted, errors, i + 1)
                    self._handle_errors(errors, task, task.position)
                    if out:
                        self._pending_out.append((task.split.split_id, out))
        self._collect_late_drops()

    def _end_of_input(self) -> None:
        for task in self.tasks.values():
            for i, step in enumerate(task.chain):
                emitted = step.on_end()
                if emitted:
                    errors: list[tuple[Record, Exception]] = []
                    out = run_chain(task.chain, emitted, errors, i + 1)
                    self._handle_errors(errors, task, task.position)
                    if out:
                        self._pending_out.append((task.split.split_id, out))
        self._collect_late_drops()

    def _collect_late_drops(self) -> None:
        total = 0
        for task in self.tasks.values():
            for step in task.chain:
                total += getattr(step, "late_dropped", 0)
        self.counters.late_dropped = total

    def _handle_errors(self, errors: list[tuple[Record, Exception]], task: Task, position: Any) -> None:
        if not errors:
            return
        self.counters.errors += len(errors)
        first_record, first_error = errors[0]
        message = (
            f"{len(errors)} record(s) failed in split {task.split.split_id} near position {position}: "
            f"{type(first_error).__name__}: {first_error}; first record: {_preview(first_record)}"
        )
        if self.config.on_error == OnErrorPolicy.FAIL:
            raise TaskFailure(message)
        self._log_record_error(message, task.split.split_id)

    def _log_record_error(self, message: str, split_id: str) -> None:
        """Logs record errors, at most ERROR_LOG_LIMIT_PER_MIN a minute (all are counted)."""
        now = time.monotonic()
        while self._errors_logged and now - self._errors_logged[0] > 60:
            self._errors_logged.popleft()
        if len(self._errors_logged) < ERROR_LOG_LIMIT_PER_MIN:
            self._errors_logged.append(now)
            logger.warning(message, extra={"task_id": split_id})

    async def _write_pending(self) -> None:
        pending, self._pending_out = self._pending_out, []
        for split_id, out in pending:
            self.tasks[split_id].events_out += len(out)
            self.counters.events_out += len(out)
            staged = False
            for sink in self.sinks:
                if self.exactly_once and _is_transactional(sink):
                    staged = True
                else:
                    await sink.write(split_id, out)
            if staged:
                self.staging.add(split_id, out)

    async def _flush_sinks(self) -> None:
        if self._pending_out:
            await self._write_pending()
        for sink in self.sinks:
            await sink.flush()
        now_ms = time.time() * 1000
        for ingest_ms, count in self._pending_latency:
            self.counters.latency.record(max(now_ms - ingest_ms, 0.0), count)
        self._pending_latency.clear()
        self._last_flush = now = time.monotonic()
        if now - self._last_commit < FLUSH_INTERVAL_S:
            return  # positions are only a restart hint here; no need to commit them more often
        self._last_commit = now
        positions = {sid: t.position for sid, t in self.tasks.items() if t.position is not None}
        for reader in self.readers:
            mine = {sid: p for sid, p in positions.items() if self.tasks[sid].reader is reader}
            if mine:
                await reader.commit(mine)

    # ------------------------------------------------------------------------------ control

    async def _control_loop(self) -> None:
        assert self.channel is not None
        while True:
            try:
                message = await self.channel.receive()
            except (ConnectionError, OSError, ValueError):
                message = None
            if message is None:
                logger.error("control plane connection lost; worker %d stops", self.index)
                os._exit(3)  # the control plane restarts the job from its last checkpoint
            kind = message.get("type")
            if kind == "stop":
                self.stopping.set()
                self.running.set()
            elif kind == "pause":
                self.running.clear()
                logger.info("paused", extra={"task_id": None})
            elif kind == "resume":
                self.running.set()
                logger.info("resumed", extra={"task_id": None})
            elif kind == "checkpoint":
                self._barriers.append(Barrier.from_message(message))
            elif kind == "checkpoint_complete":
                self._completed.append(
                    (int(message["checkpoint_id"]), bool(message.get("final")), bool(message.get("stop")))
                )

    def _heartbeat_message(self) -> dict[str, Any]:
        """The cumulative counters and resources; called from the heartbeat thread, so it copies
        what the event loop may change (each copy of a dict or list is atomic under the GIL)."""
        c = self.counters
        memory = self._process.memory_info()
        tasks = list(self.tasks.items())
        return {
            "type": "heartbeat",
            "events_in": c.events_in,
            "events_out": c.events_out,
            "errors": c.errors,
            "late_dropped": c.late_dropped,
            "backpressure_events": c.backpressure_events,
            "backpressure_ms": round(c.backpressure_ms, 3),
            "queue_fill": self.queue.qsize() / QUEUE_BATCHES,
            "latency": dict(c.latency.counts),
            "cpu_percent": self._process.cpu_percent(None),
            "rss_bytes": memory.rss,
            "tasks": {
                sid: {"events_in": t.events_in, "events_out": t.events_out, "finished": t.finished}
                for sid, t in tasks
            },
            "problems": self._problems(),
        }

    def _problems(self) -> list[str]:
        """What the connectors are retrying now (their ``problem``), e.g. a broker out of reach."""
        found: list[str] = []
        for kind, connectors in (("source", list(self.readers)), ("sink", list(self.sinks))):
            for i, connector in enumerate(connectors):
                problem = getattr(connector, "problem", None)
                if problem:
                    found.append(f"{kind} {i}: {problem}")
        return found


class HeartbeatThread(threading.Thread):
    """Sends a heartbeat every ``interval_s`` from its own thread.

    A step that holds the event loop for seconds (a wide sliding window over a large batch) must not
    silence the worker: its CPU and memory stay visible and the control plane keeps hearing from it.
    """

    def __init__(self, beat: Callable[[], dict[str, Any]], channel: WorkerChannel, interval_s: float) -> None:
        super().__init__(name="heliosdb-heartbeat", daemon=True)
        self._beat = beat
        self._channel = channel
        self._interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                message = self._beat()
            except RuntimeError as e:  # a dict resized by the loop while copied: the next beat will do
                logger.debug("heartbeat skipped: %s", e)
                continue
            try:
                self._channel.send_now(message)
            except (ConnectionError, OSError):
                return  # the control loop sees the lost connection and stops the worker

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=5.0)


def _is_transactional(sink: SinkWriter) -> bool:
    """An exactly-once sink: its output waits for the checkpoint that commits it."""
    return bool(getattr(sink, "exactly_once", False)) and hasattr(sink, "write_transaction")


def run_chain(chain: list[Any], records: Batch, errors: list[tuple[Record, Exception]], start: int) -> Batch:
    for step in chain[start:]:
        if not records:
            break
        records = step.process(records, errors)
    return records


def reader_index(reader: SourceReader, readers: list[SourceReader]) -> int:
    return readers.index(reader)


def _preview(record: Record) -> str:
    text = orjson.dumps(record, default=str).decode()
    return text if len(text) <= 300 else text[:300] + "..."


# ---------------------------------------------------------------------------------------- logging


class ChannelLogHandler(logging.Handler):
    """Ships log records to the control plane as structured lines (timestamp, level, message, task)."""

    LEVELS = LEVELS

    def __init__(self, channel: Channel, worker_index: int) -> None:
        super().__init__(logging.INFO)
        self.channel = channel
        self.worker_index = worker_index
        self.pending: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        self.pending.append(
            {
                "type": "log",
                "ts": record.created,
                "level": self.LEVELS.get(record.levelname, "info"),
                "message": message,
                "task_id": getattr(record, "task_id", None),
                "worker": self.worker_index,
            }
        )

    async def ship_forever(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            await self.ship()

    async def ship(self) -> None:
        pending, self.pending = self.pending, []
        for message in pending:
            with contextlib.suppress(ConnectionError, OSError):
                await self.channel.send(message)


# ------------------------------------------------------------------------------------- entrypoint


async def _amain(args: argparse.Namespace) -> int:
    job_dir = Path(args.job_dir)
    config_path = Path(args.config) if args.config else job_dir / "job.json"
    config = JobConfig.model_validate_json(config_path.read_bytes())
    host, _, port = args.control.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=2**24)
    channel = WorkerChannel(reader, writer)
    await channel.send(
        {
            "type": "hello",
            "job_id": args.job_id,
            "index": args.index,
            "attempt": args.attempt,
            "pid": os.getpid(),
            "token": os.environ.get("HELIOS_WORKER_TOKEN", ""),
        }
    )
    handler = ChannelLogHandler(channel, args.index)
    logging.getLogger("heliosdb_streaming").addHandler(handler)
    shipper = asyncio.create_task(handler.ship_forever())
    storage = storage_from_uri(args.checkpoints) if args.checkpoints else None
    worker = Worker(
        config,
        job_id=args.job_id,
        index=args.index,
        attempt=args.attempt,
        job_dir=job_dir,
        channel=channel,
        storage=storage,
        restore_from=args.restore,
        restore_storage=storage_from_uri(args.restore_storage) if args.restore_storage else None,
        metrics=os.environ.get("HELIOS_WORKER_METRICS", "1") != "0",
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)
    code = await worker.run()
    shipper.cancel()
    await handler.ship()
    await channel.close()
    return code


def bound_output(stdout_file: str | None, stderr_file: str | None, max_bytes: int, backups: int) -> None:
    """Keeps the files the launcher made this process's stdout (the ``print`` sink's lines) and
    stderr under ``max_bytes`` each, rotated to ``backups`` older files: a chatty job cannot fill the
    disk. Descriptors 1 and 2 follow the rotation, so a crash's last words land there too."""
    if stdout_file:
        sys.stdout = RotatingTextStream(RotatingFile(Path(stdout_file), max_bytes, backups, fd=1))
    if stderr_file:
        sys.stderr = RotatingTextStream(RotatingFile(Path(stderr_file), max_bytes, backups, fd=2))


def configure_logging(worker_index: int) -> None:
    """Where a worker's own log records go besides the control channel (which gets info and up)."""
    if os.environ.get("HELIOS_LOG_FORMAT") == "json":  # in a pod: stderr is the pod log, the log store
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLineFormatter(worker_index))
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    else:  # stderr (kept in the job directory) gets warnings and crashes; the job log gets info and up
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(message)s"))
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("heliosdb_streaming").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="heliosdb-worker")
    parser.add_argument("--job-dir", required=True)
    # a pod mounts the job from a read-only Secret volume and keeps a writable emptyDir as its job dir
    parser.add_argument("--config", help="job config file (default: JOB_DIR/job.json)")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--attempt", type=int, default=0)
    parser.add_argument("--control", required=True, help="host:port of the control plane")
    parser.add_argument("--checkpoints", help="checkpoint storage URI (file:///... or s3://bucket/prefix)")
    parser.add_argument("--restore", help="checkpoint or savepoint directory (in that storage) to restore")
    parser.add_argument("--restore-storage", help="the storage --restore is in, if not --checkpoints")
    parser.add_argument("--stdout-file", help="the file that is stdout: keep it size-bounded (rotated)")
    parser.add_argument("--stderr-file", help="the file that is stderr: keep it size-bounded (rotated)")
    parser.add_argument("--output-max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument("--output-backups", type=int, default=DEFAULT_BACKUPS)
    args = parser.parse_args(argv)
    bound_output(args.stdout_file, args.stderr_file, args.output_max_bytes, args.output_backups)
    configure_logging(args.index)
    sys.exit(asyncio.run(_amain(args)))


if __name__ == "__main__":
    main()
