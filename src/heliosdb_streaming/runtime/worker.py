"""A worker process: runs the tasks (splits + chains) assigned to it and reports to its control plane.

Started as ``python -m heliosdb_streaming.runtime.worker --job-dir DIR --index I --attempt A --control
HOST:PORT``. The job config is ``DIR/job.json`` (or ``--config FILE``). Worker ``I`` of ``P`` owns the
splits whose position in the sorted split list is ``I`` modulo ``P``, so the assignment is deterministic
and a rescale moves whole tasks.

This module is the worker's composition root and lifecycle: it opens the tasks (split assignment,
restored state), runs the processing loop and closes everything; the entrypoint below wires the
process (arguments, logging, the control connection). The parts live where their rules can be read
on their own:

- ``task``: the tasks, their counters and their state stores;
- ``datapath``: sources -> bounded queue -> chains -> sinks, with the flush and commit timing;
- ``checkpoint/participant``: barriers, task snapshots, acks, exactly-once staging and commits;
- ``control_link``: the control channel's commands, heartbeats (from a thread of their own) and the
  outcome;
- ``stages`` and ``exchange/``: a plan with stage boundaries runs its later stages in key-group tasks,
  fed in process at parallelism 1 and, at a higher parallelism, through the job's internal Kafka
  topics (``exchange/kafka_exchange.py``, whose docstring gives the checkpoint order the
  participant follows); this worker runs its share of every stage (``exchange/worker_plan.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from heliosdb_streaming.model import transformations
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.plan import JobPlan, plan_job
from heliosdb_streaming.runtime import graph
from heliosdb_streaming.runtime.checkpoint.participant import CheckpointParticipant
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage, storage_from_uri
from heliosdb_streaming.runtime.checkpoint.tasks import OutputStaging, RestoredTask
from heliosdb_streaming.runtime.contracts import SinkWriter, SourceReader, SplitBatch, StateStore
from heliosdb_streaming.runtime.control_link import ControlLink
from heliosdb_streaming.runtime.datapath import TIMER_INTERVAL_S, DataPath
from heliosdb_streaming.runtime.exchange.base import Exchange
from heliosdb_streaming.runtime.exchange.kafka_exchange import KafkaExchange, TaskInput
from heliosdb_streaming.runtime.exchange.local import LocalExchange
from heliosdb_streaming.runtime.exchange.worker_plan import needs_kafka, worker_exchange_plan
from heliosdb_streaming.runtime.logformat import (
    LEVELS,
    JsonLineFormatter,
    MaskingFormatter,
    log_uncaught_exceptions,
)
from heliosdb_streaming.runtime.protocol import Channel, WorkerChannel
from heliosdb_streaming.runtime.rotation import (
    DEFAULT_BACKUPS,
    DEFAULT_MAX_BYTES,
    RotatingFile,
    RotatingTextStream,
)
from heliosdb_streaming.runtime.stages import (
    StageRunner,
    StageTask,
    merge_positions,
    parse_stage_task_id,
    stage_task_id,
)
from heliosdb_streaming.runtime.state.keygrouped import group_prefix
from heliosdb_streaming.runtime.task import Counters, Task, TaskStores

logger = logging.getLogger("heliosdb_streaming.worker")

REMOTE_POLL_S = 0.01
WINDOW_OR_CEP = (transformations.WindowTransformation, transformations.CepTransformation)


class Worker:
    """One worker of a job: its data path, its checkpoint participant and its control link, run
    from open to close. The attributes tests and benchmarks use (``counters``, ``tasks``,
    ``stopping``, ...) are the data path's own."""

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
        exchange: Exchange | None = None,
    ) -> None:
        self.config = config
        # how records cross stage boundaries: given (a test or benchmark), in process when one worker
        # runs every task (parallelism 1), else opened at start through the job's internal Kafka
        # topics (``remote``); a plan with one split only needs none (one task sees every event)
        self.exchange = exchange
        # the exchange across worker processes this worker opened (internal Kafka topics), if any
        self.remote: KafkaExchange | None = None
        # off only to measure what metrics cost (benchmarks.metrics_cost): no latency, no heartbeats
        self.metrics = metrics
        self.job_id = job_id
        self.index = index
        self.attempt = attempt
        self.job_dir = job_dir
        self.channel = channel
        self.storage = storage
        self.restore_from = restore_from
        # where ``restore_from`` lives: the job's own storage, or another job's (a job started from a
        # savepoint of another job)
        self.restore_storage = restore_storage or storage
        # exactly-once sinks need a coordinator that completes checkpoints; without one (a benchmark
        # running a worker in-process) every sink is written directly, at least once
        self.exactly_once = storage is not None and channel is not None
        self.staging = OutputStaging()
        self.data = DataPath(config, metrics=metrics, exactly_once=self.exactly_once, staging=self.staging)
        self.link = ControlLink(channel, index, self.data)
        self.checkpoints = CheckpointParticipant(
            job_id=job_id,
            storage=storage,
            restore_from=restore_from,
            restore_storage=self.restore_storage,
            tasks=self.data.tasks,
            sinks=self.data.sinks,
            stage_tasks=self.data.stage_tasks,
            staging=self.staging,
            flush=self.data.flush_sinks,
            stop=self.data.stop,
            send=self.link.send,
            remote=self._remote_stages,
            pump=self.data.pump_and_write,
            stopping=self.data.stopping.is_set,
        )
        self.stores = TaskStores(config, job_dir, attempt)

    # the data path's state, under the names tests, benchmarks and the entrypoint use
    @property
    def counters(self) -> Counters:
        return self.data.counters

    @property
    def tasks(self) -> dict[str, Task]:
        return self.data.tasks

    @property
    def readers(self) -> list[SourceReader]:
        return self.data.readers

    @property
    def sinks(self) -> list[SinkWriter]:
        return self.data.sinks

    @property
    def queue(self) -> asyncio.Queue[SplitBatch]:
        return self.data.queue

    @property
    def running(self) -> asyncio.Event:
        return self.data.running

    @property
    def stopping(self) -> asyncio.Event:
        return self.data.stopping

    # ------------------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Runs to completion; the exit code is 0 when finished or stopped, 1 on failure."""
        control = asyncio.create_task(self.link.listen(self.checkpoints)) if self.channel else None
        if self.metrics:
            self.link.start_heartbeats()
        try:
            await self._open()
            outcome = await self._process_until_done()
            await self.data.flush_sinks()
            logger.info(
                "worker %d %s: %d events in, %d out, %d errors",
                self.index,
                outcome,
                self.counters.events_in,
                self.counters.events_out,
                self.counters.errors,
                extra={"task_id": None},
            )
            await self.link.report(outcome)
            return 0
        except asyncio.CancelledError:
            return 3
        except Exception as e:
            logger.error("worker %d failed: %s", self.index, e, extra={"task_id": None})
            logger.debug("%s", traceback.format_exc())
            await self.link.report("failed", error=f"{type(e).__name__}: {e}")
            return 1
        finally:
            self.link.stop_heartbeats()
            if control:
                control.cancel()
            await self._close()

    async def _open(self) -> None:
        """Assigns this worker its splits of every source, restores their state from the snapshot to
        start from (if any), opens sources and sinks, then commits the restored staged output."""
        manifest = await self.checkpoints.restore_manifest()
        restored: dict[str, RestoredTask] = {}
        self.readers.extend(graph.build_source_readers(self.config))
        parallelism = self.config.parallelism
        discovered = [await reader.discover_splits() for reader in self.readers]
        every_split = [s.split_id for splits in discovered for s in splits]
        plan = plan_job(self.config.sources, self.config.transformations)
        servers = self.config.repartition_servers()
        if self.exchange is None and needs_kafka(plan, parallelism) and len(every_split) > 1 and servers:
            # records cross worker processes through the job's internal topics; the attempt (the
            # run's number, larger on every run) fences off what earlier runs wrote there
            self.remote = KafkaExchange(
                bootstrap_servers=servers,
                job_id=self.job_id,
                max_parallelism=self.config.max_parallelism,
                attempt=self.attempt,
                max_backlog_messages=self.config.max_backlog_messages(),
            )
            self.exchange = self.remote
            self.data.remote = self.remote
        staged = plan.needs_exchange and self._routes(every_split)
        stage0 = plan.stages[0].steps if staged else None
        if plan.needs_exchange and not staged and len(every_split) > 1 and self.index == 0:
            # submit refuses such a job; a worker started by hand (a benchmark) may still get here
            logger.warning(
                "the plan regroups records by key (%s), but at parallelism %d this worker has no "
                "brokers for internal topics (config.repartition): each keyed step runs in the task "
                "of the split it reads, right only if every key lives in one split",
                plan.boundaries[0].reason,
                parallelism,
                extra={"task_id": None},
            )
        for reader, splits in zip(self.readers, discovered, strict=True):
            assigned = [s for k, s in enumerate(splits) if k % parallelism == self.index]
            positions: dict[str, Any] = {}
            for split in assigned:
                stores: dict[str, StateStore] = {}
                task_state = await self.checkpoints.restore_task(
                    split.split_id, self.stores.state_dir(split.split_id)
                )
                if task_state is not None:
                    restored[split.split_id] = task_state
                    stores = dict(task_state.stores)
                    self.stores.adopt(stores.values())
                    if task_state.position is not None:
                        positions[split.split_id] = task_state.position
                task = Task(split=split, reader=reader, chain=[], stores=stores)
                task.position = positions.get(split.split_id)
                task.chain = graph.build_chain(
                    self.config, functools.partial(self.stores.store, task), stage0
                )
                self.tasks[split.split_id] = task
            await reader.open(assigned, positions)
            logger.info(
                "source %d: %d splits, %d assigned to worker %d%s",
                reader_index(reader, self.readers),
                len(splits),
                len(assigned),
                self.index,
                f", {len(positions)} restored from checkpoint {self.checkpoints.restored_checkpoint}"
                if manifest
                else "",
                extra={"task_id": "task-1"},
            )
        if staged:
            steps = self.config.transformations
            later = {graph.store_name(i, steps[i].type) for stage in plan.stages[1:] for i in stage.steps}
            per_split = sorted({n for t in restored.values() for n in t.stores} & later)
            if per_split:  # a snapshot of this job from before it regrouped by key
                logger.warning(
                    "the snapshot holds per-split state of step(s) %s, which now run in key-group "
                    "tasks after a repartition; that state is not restored",
                    ", ".join(per_split),
                    extra={"task_id": None},
                )
            await self._open_stages(plan, every_split, restored)
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
        self.sinks.extend(graph.build_sinks(self.config))
        for sink in self.sinks:
            await sink.open()
        await self.checkpoints.commit_restored(restored)

    def _routes(self, every_split: list[str]) -> bool:
        """Whether this worker applies the plan's boundaries: through the exchange it was given, or
        in process when it runs every task (parallelism 1) and there is more than one split (one
        split read by one task already is the one-task answer: no exchange, no overhead)."""
        if self.exchange is not None:
            return True
        return self.config.parallelism == 1 and len(every_split) > 1

    async def _open_stages(
        self, plan: JobPlan, every_split: list[str], restored: dict[str, RestoredTask]
    ) -> None:
        """The later stages' key-group tasks of this worker, restored from the snapshot if any."""
        runner = StageRunner(
            self.config,
            plan,
            self.exchange or LocalExchange(),
            index=self.index,
            split_ids=every_split,
            open_store=self.stores.open_store,
            on_errors=self.data.handle_errors,
        )
        now = time.monotonic()
        for task_id, task in runner.by_id.items():
            task_state = await self.checkpoints.restore_task(task_id, self.stores.state_dir(task_id))
            if task_state is not None:
                restored[task_id] = task_state
                task.stores.update(task_state.stores)
                self.stores.adopt(task_state.stores.values())
                task.restore(task_state.position or {}, now)
            else:
                await self._restore_rescaled(task, restored, now)
        if self.remote is not None:
            await self._open_remote(plan, every_split, list(self.tasks), restored)
        runner.advance()  # restored chains take the restored watermark before any record
        runner.track_latency = self.remote is not None  # the sink's latency is end to end
        self.data.stages = runner
        self.data.stage_tasks.update(runner.by_id)
        self.data.stage0_stateless = not any(
            isinstance(self.config.transformations[i], WINDOW_OR_CEP) for i in plan.stages[0].steps
        )
        logger.info(
            "plan: %d stages; %s",
            len(plan.stages),
            "; ".join(plan.describe([t.type for t in self.config.transformations])),
            extra={"task_id": None},
        )

    async def _restore_rescaled(self, task: StageTask, restored: dict[str, RestoredTask], now: float) -> None:
        """Restores a key-group task from the snapshot's tasks of the same stage whose key groups
        overlap its own (the snapshot was taken at another parallelism): each key group's entries
        (keys prefixed by group, ``state/keygrouped.py``) move whole into this task's stores. Their
        staged output is committed under their own ids (a sink's marker makes that happen once)."""
        sources = []
        for old_id in self.checkpoints.snapshot_task_ids():
            parsed = parse_stage_task_id(old_id)
            if parsed is not None and parsed[0] == task.stage.index:
                given = range(max(parsed[1].start, task.groups.start), min(parsed[1].stop, task.groups.stop))
                if len(given):
                    sources.append((old_id, given))
        if not sources:
            return
        parts: list[tuple[dict[str, Any], range]] = []
        for old_id, given in sources:
            scratch = self.stores.state_dir(f"{task.task_id}.from.{old_id}")
            old = await self.checkpoints.restore_task(old_id, scratch)
            if old is None:
                continue
            restored.setdefault(old_id, RestoredTask(old.position, {}, old.pending_output))
            for name, store in old.stores.items():
                target = self.stores.open_store(task.task_id, task.stores, name)
                for group in given:
                    for key, value in store.items(group_prefix(group)):
                        target.put(key, value)
                close = getattr(store, "close", None)
                if close is not None:
                    close()
            await asyncio.to_thread(shutil.rmtree, scratch, True)  # copied: the restored files go
            parts.append((old.position or {}, given))
        position = merge_positions(parts, task.groups)
        restored[task.task_id] = RestoredTask(position, {}, [])
        task.restore(position, now)
        logger.info(
            "task %s restored from %s (snapshot taken at another parallelism)",
            task.task_id,
            ", ".join(old_id for old_id, _given in sources),
            extra={"task_id": task.task_id},
        )

    def _remote_stages(self) -> tuple[StageRunner, KafkaExchange] | None:
        """The stages and their exchange when they cross worker processes (for checkpoints)."""
        if self.remote is None or self.data.stages is None:
            return None
        return self.data.stages, self.remote

    async def _open_remote(
        self, plan: JobPlan, every_split: list[str], own: list[str], restored: dict[str, RestoredTask]
    ) -> None:
        """Creates the internal topics this worker writes and reads, and starts reading each of its
        key-group tasks' partitions where its snapshot had read them (a snapshot of another job, a
        savepoint it started from, read other topics: its tasks start at the beginning)."""
        assert self.remote is not None
        wplan = worker_exchange_plan(
            plan,
            index=self.index,
            parallelism=self.config.parallelism,
            max_parallelism=self.config.max_parallelism,
            every_split=every_split,
            own_splits=own,
        )
        same_job = str((self.checkpoints.manifest or {}).get("job_id") or self.job_id) == self.job_id
        inputs: list[TaskInput] = []
        for spec in wplan.inputs:
            offsets: dict[int, int] = {}
            attempt: int | None = None
            task_state = restored.get(stage_task_id(spec.boundary, spec.groups))
            saved = (task_state.position or {}).get("exchange") if task_state is not None else None
            if saved and same_job:
                offsets = {int(p): int(o) for p, o in saved.get("offsets", {}).items()}
                attempt = int(saved["attempt"])
            inputs.append(TaskInput(spec.boundary, spec.groups, spec.origins, offsets, attempt))
        await self.remote.open(wplan.outputs, inputs, wplan.readers)
        logger.info(
            "internal topics: writes stage(s) %s, reads %s (attempt %d)",
            sorted(wplan.outputs) or "none",
            ", ".join(f"stage {i.boundary} groups {i.groups.start}-{i.groups.stop - 1}" for i in inputs)
            or "none",
            self.attempt,
            extra={"task_id": None},
        )

    async def _close(self) -> None:
        if self.remote is not None:
            with contextlib.suppress(Exception):
                await self.remote.close()
        await self.data.close()
        self.stores.close()

    async def _process_until_done(self) -> str:
        """Processes batches until the job is done here ('finished') or a stop arrives ('stopped').

        Barriers and checkpoint completions are handled between batches, so every snapshot sees
        each task at a batch boundary. Once every split is exhausted the worker reports 'drained'
        and, under a coordinator, waits for the final checkpoint before it finishes. Sinks are
        flushed as soon as the queue is empty, and at least every FLUSH_INTERVAL_S at full speed.
        """
        data = self.data
        pollers = data.start_pollers()
        if not self.tasks:
            logger.info("worker %d has no splits to read", self.index, extra={"task_id": None})
        last_timer = time.monotonic()
        ending = drained = False
        # across worker processes the later stages are fed by other workers too: look often
        wait_s = REMOTE_POLL_S if self.remote is not None else TIMER_INTERVAL_S
        try:
            while True:
                data.counters.begin_busy()  # busy: a turn, but for its wait for input
                if data.stopping.is_set():
                    return "stopped"
                await self.checkpoints.handle_messages()
                if not ending and data.all_finished() and data.queue.empty():
                    data.end_of_input()  # this worker's splits; across processes its stages follow
                    ending = True
                if ending and not drained and data.finish_stages():
                    drained = True
                    await data.flush_sinks()
                    await data.flush_exchange()
                    if not self.exactly_once:
                        return "finished"
                    await self.link.send({"type": "drained"})
                if drained and self.checkpoints.final_committed:
                    return "finished"
                for p in pollers:
                    if p.done() and p.exception() is not None:
                        raise p.exception()  # type: ignore[misc]
                data.counters.end_busy()
                batch: SplitBatch | None = None
                if not ending and not data.lagging():
                    with contextlib.suppress(TimeoutError):
                        batch = await asyncio.wait_for(data.queue.get(), timeout=wait_s)
                elif not ending:  # the next stages are too far behind: only receive for a while
                    await asyncio.sleep(wait_s)
                else:
                    await asyncio.sleep(0.01)
                data.counters.begin_busy()
                if batch is not None:
                    data.process_batch(batch)
                    # and what else is here (at most QUEUE_BATCHES): then "nothing more" is true. A
                    # barrier that arrived meanwhile is taken at the next batch boundary, not after
                    # the whole queue (slow user code makes each batch take seconds).
                    while not data.queue.empty():
                        await asyncio.sleep(0)  # lets the control link read what arrived
                        if self.checkpoints.has_messages:
                            break
                        data.process_batch(data.queue.get_nowait())
                    await data.wait_for_room()  # the internal topics' backpressure
                elif self.remote is not None:
                    data.pump_stages()
                now = time.monotonic()
                if now - last_timer >= TIMER_INTERVAL_S and not drained:
                    last_timer = now
                    data.on_time()
                    data.publish_exchange()  # watermarks of quiet origins move on
                await data.flush_due(now)
        finally:
            data.counters.end_busy()
            for p in pollers:
                p.cancel()


def reader_index(reader: SourceReader, readers: list[SourceReader]) -> int:
    return readers.index(reader)


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
    log_uncaught_exceptions(logging.getLogger("heliosdb_streaming.runtime.worker"))


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
