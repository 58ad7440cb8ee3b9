"""The worker's data path: sources -> bounded queue -> each task's chain -> sinks.

It exists apart from the worker's lifecycle and checkpoints because it is the hot path, and its
timing rules are easy to break when mixed with the rest: one poll loop per source puts batches on a
bounded queue (backpressure is measured where ``put`` blocks); the processing loop runs each batch
through its task's chain; output is written to the sinks (or staged for exactly-once sinks) and the
sinks are flushed as soon as the queue is empty (so a moderate rate is not held back), and at least
every ``FLUSH_INTERVAL_S`` at full speed; source positions are committed at most every
``FLUSH_INTERVAL_S``. Latency is recorded when the batch's output is flushed; when later stages run
in other worker processes, where the last stage's output is flushed (its records' ingestion time
came with them through the exchange), so it is end to end there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import orjson

from heliosdb_streaming.model.config import JobConfig, OnErrorPolicy
from heliosdb_streaming.runtime.checkpoint.participant import is_transactional
from heliosdb_streaming.runtime.checkpoint.tasks import OutputStaging
from heliosdb_streaming.runtime.contracts import Batch, Record, SinkWriter, SourceReader, SplitBatch
from heliosdb_streaming.runtime.exchange.kafka_exchange import KafkaExchange
from heliosdb_streaming.runtime.stages import StageRunner, StageTask
from heliosdb_streaming.runtime.task import Counters, Task, TaskFailure, run_chain

logger = logging.getLogger("heliosdb_streaming.worker")  # one logger for all parts of a worker

POLL_MAX_RECORDS = 4096
POLL_MIN_RECORDS = 32
BATCH_TARGET_S = 0.05
"""A batch should take about this long to process: slow steps (user code at a millisecond a record)
get smaller polls, so barriers, timers and flushes are not held for seconds behind one batch."""
QUEUE_BATCHES = 4
FLUSH_INTERVAL_S = 0.05
TIMER_INTERVAL_S = 0.2
ERROR_LOG_LIMIT_PER_MIN = 20


class DataPath:
    """The tasks, sources and sinks of one worker and the records flowing between them."""

    def __init__(
        self, config: JobConfig, *, metrics: bool, exactly_once: bool, staging: OutputStaging
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.exactly_once = exactly_once
        self.staging = staging
        self.counters = Counters()
        self.tasks: dict[str, Task] = {}
        # a job whose plan has boundaries: the later stages (None: no exchange, today's path)
        self.stages: StageRunner | None = None
        self.stage_tasks: dict[str, StageTask] = {}
        # stage 0 keeps nothing to flush at the end: a finished split finishes its origin at once
        self.stage0_stateless = True
        # the stages' exchange when it crosses worker processes (internal Kafka topics): its tasks
        # are fed asynchronously, finish when every origin (of every worker) finished, and make
        # what crossed durable at checkpoints rather than at every sink flush
        self.remote: KafkaExchange | None = None
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
        self.poll_records = POLL_MAX_RECORDS  # sized by the measured cost per record (_size_polls)
        self._record_cost = 0.0

    def stop(self) -> None:
        """Stops reading; a paused worker is woken so that it can stop."""
        self.stopping.set()
        self.running.set()

    async def close(self) -> None:
        for task in self.tasks.values():
            for step in task.chain:
                close = getattr(step, "close", None)  # user code's close (process functions)
                if close is not None:
                    try:
                        close()
                    except Exception as e:
                        logger.warning(
                            "closing step %s raised %s: %s",
                            step.name,
                            type(e).__name__,
                            e,
                            extra={"task_id": task.split.split_id},
                        )
        for reader in self.readers:
            with contextlib.suppress(Exception):
                await reader.close()
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                await sink.close()

    def has_tasks(self, reader: SourceReader) -> bool:
        return any(t.reader is reader for t in self.tasks.values())

    def all_finished(self) -> bool:
        return all(t.finished for t in self.tasks.values())

    # ------------------------------------------------------------------------------ sources

    def start_pollers(self) -> list[asyncio.Task[None]]:
        """One poll loop per source that has tasks here."""
        return [asyncio.create_task(self._poll_loop(r)) for r in self.readers if self.has_tasks(r)]

    async def _poll_loop(self, reader: SourceReader) -> None:
        while not self.stopping.is_set():
            await self.running.wait()
            batches = await reader.poll(self.poll_records, 0.1)
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

    # ------------------------------------------------------------------------------ processing

    def process_batch(self, batch: SplitBatch) -> None:
        task = self.tasks[batch.split_id]
        records = batch.records
        n = len(records)
        task.events_in += n
        self.counters.events_in += n
        errors: list[tuple[Record, Exception]] = []
        started = time.perf_counter()
        out = run_chain(task.chain, records, errors, 0)
        self._handle_errors(errors, task.split.split_id, batch.position)
        task.position = batch.position
        if batch.finished:
            task.finished = True
        if self.stages is not None:
            finished = batch.finished and self.stage0_stateless
            self.stages.push(0, batch.split_id, out, finished=finished, ingest_ms=batch.ingest_ms)
            self.stages.pump()
            self._take_stage_output()
        elif out:
            self._pending_out.append((batch.split_id, out))
        if self.metrics and self.remote is None:  # across processes: timed where the last stage is
            self._pending_latency.append((batch.ingest_ms, n))
        if n:
            self._size_polls((time.perf_counter() - started) / n)

    def _size_polls(self, seconds_per_record: float) -> None:
        """Sizes the next polls so that a batch takes about BATCH_TARGET_S (a moving average of the
        cost per record; fast pipelines stay at POLL_MAX_RECORDS)."""
        self._record_cost = 0.8 * self._record_cost + 0.2 * seconds_per_record
        if self._record_cost > 0:
            fit = int(BATCH_TARGET_S / self._record_cost)
            self.poll_records = max(POLL_MIN_RECORDS, min(POLL_MAX_RECORDS, fit))

    def _take_stage_output(self) -> None:
        """What the last stage emitted goes to the sinks; across processes, with its ingestion times."""
        assert self.stages is not None
        self._pending_out.extend(self.stages.take_output())
        if self.remote is not None:
            latency = self.stages.take_latency()
            if self.metrics:
                self._pending_latency.extend(latency)

    def _emit(self, task: Task, out: Batch) -> None:
        """Output of a split task outside ``process_batch`` (timers, end of input)."""
        if self.stages is not None:
            self.stages.push(0, task.split.split_id, out)
        elif out:
            self._pending_out.append((task.split.split_id, out))

    def on_time(self, now_ms: int | None = None) -> None:
        """Lets every step emit what processing time releases (timers, idle windows, idle origins)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        for task in self.tasks.values():
            for i, step in enumerate(task.chain):
                self._run_emitted(task, i, step.on_time(now_ms), step)
        if self.stages is not None:
            self.stages.on_time(now_ms)
            self._take_stage_output()
        self._collect_late_drops()

    def end_of_input(self) -> None:
        """Lets every step emit what it still holds, now that every split is exhausted (stage by
        stage: stage 0's output is routed on before stage 1 flushes, and so on). Across worker
        processes only this worker's splits finish here: the later stages finish in
        ``finish_stages``, once every origin of every worker has."""
        for task in self.tasks.values():
            for i, step in enumerate(task.chain):
                self._run_emitted(task, i, step.on_end(), step)
        if self.stages is not None and self.remote is not None:
            for split_id in self.tasks:
                self.stages.push(0, split_id, [], finished=True)
            self.pump_stages()
        elif self.stages is not None:
            self.stages.end_of_input(list(self.tasks))
            self._take_stage_output()
        self._collect_late_drops()

    def finish_stages(self) -> bool:
        """After ``end_of_input``: True once this worker's later-stage tasks have all finished too
        (in process they already have; across processes each waits for all its origins' ends)."""
        if self.stages is None or self.remote is None:
            return True
        done = self.stages.finish_step(self.remote.finished)
        self._take_stage_output()
        self._collect_late_drops()
        return done

    def pump_stages(self) -> None:
        """Lets the later stages' tasks take what arrived for them (across processes it arrives at
        any time, not only within the batch that sent it)."""
        if self.stages is not None:
            self.stages.pump()
            self._take_stage_output()

    async def pump_and_write(self) -> None:
        """``pump_stages``, then what the last stage emitted goes to the sinks (or their staging)."""
        self.pump_stages()
        if self._pending_out:
            await self._write_pending()

    async def wait_for_room(self) -> None:
        """Backpressure of the internal topics: waits while too much is queued for the broker."""
        if self.remote is not None:
            await self.remote.wait_for_room()

    def lagging(self) -> bool:
        """The internal topics' readers are more than the bound behind: read no more input for now
        (``KafkaExchange.lagging``; the loop keeps receiving and handling checkpoints)."""
        return self.remote is not None and self.remote.lagging()

    def publish_exchange(self) -> None:
        """Sends what waits to cross to other workers and the origins' watermarks, without waiting
        for the broker's acknowledgement (checkpoints wait for it)."""
        if self.remote is not None:
            self.remote.publish()

    async def flush_exchange(self) -> None:
        """Makes what crossed to other workers durable and broadcasts the origins' watermarks."""
        if self.remote is not None:
            await self.remote.flush()

    def _run_emitted(self, task: Task, i: int, emitted: Batch, step: Any) -> None:
        """Runs what step ``i`` emitted on its own through the rest of the chain. Steps that run user
        code on timers (process) report the errors of those calls through ``take_errors``."""
        take_errors = getattr(step, "take_errors", None)
        errors: list[tuple[Record, Exception]] = take_errors() if take_errors is not None else []
        out = run_chain(task.chain, emitted, errors, i + 1) if emitted else []
        self._handle_errors(errors, task.split.split_id, task.position)
        if out:
            self._emit(task, out)

    def _collect_late_drops(self) -> None:
        total = 0
        for task in self.tasks.values():
            for step in task.chain:
                total += getattr(step, "late_dropped", 0)
        if self.stages is not None:
            total += self.stages.late_dropped()
        self.counters.late_dropped = total

    def _handle_errors(self, errors: list[tuple[Record, Exception]], task_id: str, position: Any) -> None:
        if not errors:
            return
        self.counters.errors += len(errors)
        first_record, first_error = errors[0]
        where = f"split {task_id}" if task_id in self.tasks else f"task {task_id}"
        message = (
            f"{len(errors)} record(s) failed in {where} near position {position}: "
            f"{type(first_error).__name__}: {first_error}; first record: {_preview(first_record)}"
        )
        if self.config.on_error == OnErrorPolicy.FAIL:
            raise TaskFailure(message)
        self._log_record_error(message, task_id)

    def handle_errors(self, errors: list[tuple[Record, Exception]], task_id: str, position: Any) -> None:
        """The error policy for record errors of any task (the stage runner reports through it)."""
        self._handle_errors(errors, task_id, position)

    def _log_record_error(self, message: str, split_id: str) -> None:
        """Logs record errors, at most ERROR_LOG_LIMIT_PER_MIN a minute (all are counted)."""
        now = time.monotonic()
        while self._errors_logged and now - self._errors_logged[0] > 60:
            self._errors_logged.popleft()
        if len(self._errors_logged) < ERROR_LOG_LIMIT_PER_MIN:
            self._errors_logged.append(now)
            logger.warning(message, extra={"task_id": split_id})

    # ------------------------------------------------------------------------------ sinks

    async def flush_due(self, now: float) -> None:
        """After each turn of the processing loop: flushes every FLUSH_INTERVAL_S at full speed, at
        once when the queue is empty (do not sit on events), else only writes what is pending."""
        if now - self._last_flush >= FLUSH_INTERVAL_S:
            await self.flush_sinks()
        elif self.queue.empty() and (self._pending_out or self._pending_latency):
            await self.flush_sinks()  # nothing more to read right now: do not sit on events
        elif self._pending_out:
            await self._write_pending()

    async def _write_pending(self) -> None:
        pending, self._pending_out = self._pending_out, []
        for split_id, out in pending:
            task = self.tasks.get(split_id)  # a stage task counts its output where it emits it
            if task is not None:
                task.events_out += len(out)
            self.counters.events_out += len(out)
            staged = False
            for sink in self.sinks:
                if self.exactly_once and is_transactional(sink):
                    staged = True
                else:
                    await sink.write(split_id, out)
            if staged:
                self.staging.add(split_id, out)

    async def flush_sinks(self) -> None:
        """Writes and flushes everything processed so far, records its latency and, at most every
        FLUSH_INTERVAL_S, commits the source positions."""
        if self._pending_out:
            await self._write_pending()
        if self.stages is not None and self.remote is None:
            await self.stages.exchange.flush()  # what crossed a boundary is visible downstream
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


def _preview(record: Record) -> str:
    text = orjson.dumps(record, default=str).decode()
    return text if len(text) <= 300 else text[:300] + "..."
