"""The :class:`~heliosdb_streaming.runtime.exchange.base.Exchange` across worker processes: one
internal topic per boundary (``topics.py``), partition = key group, messages in ``wire.py``'s format
written by an ``OrderedProducer`` and read into one :class:`~.inbox.Inbox` per downstream task
(``inbox.py`` says why the result is exactly once).

Sending side (every origin): ``send`` buffers records per channel (origin, key group) for at most
``linger_s`` (or ``coalesce_records``), then writes them as one numbered delivery (one Kafka message
for up to ``MAX_RECORDS_PER_MESSAGE`` records: the header, origin and position, is paid per message,
not per record); the origin's watermark rides with its records, and at most every
``watermark_interval_s`` (and at ``flush``) goes to every downstream task as one *task mark* on the
task's first key group, listing the positions it follows on the task's other groups (``wire.py``;
``inbox.py`` says why it is sound). Marks to each of the 128 key groups were most of the messages,
and most of the broker's work, before. The end of input (``MAX_WATERMARK``) goes to every key
group. ``send_barrier`` writes checkpoint N's barrier to every key group after everything the origin
sent before it.

Receiving side (every downstream task): ``open`` starts a reader per task; a background fetch loop
feeds its inbox and carries out the inbox's seeks; ``receive`` returns what is ready. When the
task's barriers are aligned, ``aligned`` says so and ``receive`` returns nothing more until the task
snapshotted (with ``snapshot``) and called ``release``.

A worker's checkpoint N with this exchange, in order (the in-process exchange needs none of it):

1. snapshot the split tasks (stage 0), then ``send_barrier(1, split_id, N)`` for each, and ``flush``;
2. for each later stage in order, for each of the worker's tasks in it: keep calling ``receive``
   and processing (that output belongs to N) until ``aligned`` is N; snapshot the task with
   ``snapshot(...)`` in its position; ``release``; then, if a stage follows, ``send_barrier`` from
   this task to it;
3. seal the sinks' output for N and acknowledge. Every worker sends its barriers before it waits
   for any alignment, so workers never wait on each other in a cycle.

End of input: ``send(..., MAX_WATERMARK)`` from each finished origin, then keep receiving until
``finished`` before a task's final flush. Backpressure: await ``wait_for_room`` after ``send``.

How far upstream runs ahead (``max_backlog_messages``): without a bound, a fast stage 0 fills the
internal topic far ahead of a slower later stage, and a checkpoint's alignment then waits until the
downstream tasks processed all of it (everything before the barrier). Each reader reports, as its
group's committed offsets, how far its task has *taken* each partition (not only fetched: what a
fetch loop holds for its task is bounded by ``MAX_READY_RECORDS``); each writer asks the broker for
the topic's end offsets and those commits every ``backlog_check_s``, and ``lagging`` is true while
the messages not yet taken exceed the bound. The worker then reads no more input (it keeps
receiving, pumping its own later stages and handling checkpoints: a worker is upstream and
downstream at once, so pausing everything could wait on itself). The bound is approximate (a check
interval of writes, and held messages after a barrier count as taken) but it does not depend on the
input rate, so neither does the alignment's length. The commits are progress reports only: a
restored task resumes from its snapshot's offsets, never from them.

Attempts: a worker process runs one attempt of the job; every task of the job restarts together
from one checkpoint in a new attempt (whose number must be larger). ``snapshot`` keeps how far each
partition was read; a task restored in a later attempt resumes from there and ignores what the
earlier attempt wrote, including what it wrote after that checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from heliosdb_streaming.runtime.contracts import Batch
from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK
from heliosdb_streaming.runtime.exchange import topics, wire
from heliosdb_streaming.runtime.exchange.base import Delivery, Exchange
from heliosdb_streaming.runtime.exchange.inbox import Aligned, Inbox
from heliosdb_streaming.runtime.exchange.kafka_transport import Backlog, OrderedProducer, PartitionReader

log = logging.getLogger(__name__)

MAX_RECORDS_PER_MESSAGE = 2000
MAX_READY_RECORDS = 50_000
"""Records a fetch loop holds for its task (fetched, not yet taken) before it waits for the task."""


@dataclass(frozen=True, slots=True)
class TaskInput:
    """A downstream task's input on one boundary: its key groups, the origins that feed it, and the
    offsets of a snapshot it is restored from (with the attempt that took it)."""

    boundary: int
    groups: range
    origins: Sequence[str]
    offsets: Mapping[int, int] = field(default_factory=dict)
    restored_attempt: int | None = None


class _Receiver:
    """One task's reader, inbox and fetch loop."""

    def __init__(self, reader: PartitionReader, inbox: Inbox) -> None:
        self.reader = reader
        self.inbox = inbox
        self.ready: list[Delivery] = []
        self.aligned: int | None = None
        self.fetched: dict[int, int] = {}  # inbox offsets as of the last fetch that filled ``ready``
        self.taken: dict[int, int] = {}  # ... as of the last ``receive``: what the task has taken
        self.ready_records = 0
        self.drained = asyncio.Event()  # the task took what was ready
        self.failure: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.wakeup = asyncio.Event()  # something for the task
        self.released = asyncio.Event()  # the task snapshotted: the fetch loop goes on


class KafkaExchange:
    """Carries records across stage boundaries through internal Kafka topics (see the module doc)."""

    def __init__(
        self,
        *,
        bootstrap_servers: Sequence[str],
        job_id: str,
        max_parallelism: int,
        attempt: int,
        watermark_interval_s: float = 0.2,
        max_queued_bytes: int = 32 * 1024 * 1024,
        linger_s: float = 0.005,
        coalesce_records: int = 500,
        max_backlog_messages: int | None = None,
        backlog_check_s: float = 0.2,
    ) -> None:
        self.bootstrap_servers = list(bootstrap_servers)
        self.job_id = job_id
        self.max_parallelism = max_parallelism
        self.attempt = attempt
        self.watermark_interval_s = watermark_interval_s
        self.max_queued_bytes = max_queued_bytes
        self.linger_s = linger_s
        self.coalesce_records = coalesce_records
        self.max_backlog_messages = max_backlog_messages
        self.backlog_check_s = backlog_check_s
        self._backlog: dict[int, int] = {}  # per output boundary: messages its readers have not taken
        self._monitors: list[asyncio.Task[None]] = []
        # records sent but not yet written, per origin and key group: small deliveries of several
        # sends become one message (fewer, larger messages: the broker's cost is per message)
        self._pending: dict[tuple[int, str], dict[int, Batch]] = {}
        # the earliest ingestion time of what is buffered per (boundary, origin, group)
        self._ingest: dict[tuple[int, str, int], float] = {}
        self._linger: asyncio.TimerHandle | None = None
        self._producers: dict[int, OrderedProducer] = {}
        self._positions: dict[tuple[int, str, int], int] = {}
        self._marks: dict[tuple[int, str], int] = {}  # the origin's latest watermark
        self._broadcast: dict[tuple[int, str], tuple[int, float]] = {}  # last broadcast: mark, when
        self._receivers: dict[tuple[int, range], _Receiver] = {}
        self._fanout: dict[int, range] = {}
        # per boundary written: the key groups of each downstream task (one task mark each)
        self._readers: dict[int, tuple[range, ...]] = {}

    # ----------------------------------------------------------------------------- lifecycle

    async def open(
        self,
        outputs: Mapping[int, int],
        inputs: Sequence[TaskInput],
        readers: Mapping[int, Sequence[range]] | None = None,
    ) -> None:
        """Creates the topics of the boundaries this worker writes to and reads from, starts a
        producer per output boundary and a reader per task input. ``outputs`` maps each boundary the
        worker writes to to its stage's number of key groups (``max_parallelism``; 1 for a global
        stage), the key groups barriers and the end of input are broadcast to. ``readers``: the key
        groups of each task reading a boundary, over all workers; watermarks then go as one task
        mark per task (``wire.py``), else as a mark to every key group."""
        self._fanout = {b: range(min(int(n), self.max_parallelism)) for b, n in outputs.items()}
        self._readers = {b: tuple(r) for b, r in (readers or {}).items() if b in self._fanout}
        for boundary in sorted({*outputs, *(i.boundary for i in inputs)}):
            await topics.ensure_topic(self.bootstrap_servers, self.topic(boundary), self.max_parallelism)
        for boundary in outputs:
            producer = OrderedProducer(
                self.bootstrap_servers,
                self.topic(boundary),
                client_id=f"helios-{self.job_id}-a{self.attempt}",
                max_queued_bytes=self.max_queued_bytes,
            )
            await producer.open()
            self._producers[boundary] = producer
            if self.max_backlog_messages is not None:
                backlog = Backlog(
                    self.bootstrap_servers, self.topic(boundary), self._fanout[boundary], self.group(boundary)
                )
                await backlog.open()
                self._backlog[boundary] = 0
                self._monitors.append(asyncio.create_task(self._watch_backlog(boundary, backlog)))
        for spec in inputs:
            await self._open_input(spec)

    async def _open_input(self, spec: TaskInput) -> None:
        if spec.restored_attempt is not None and spec.restored_attempt >= self.attempt:
            raise ValueError(
                f"a task restored from attempt {spec.restored_attempt} must run in a later attempt, not "
                f"{self.attempt}: positions restart with every attempt"
            )
        partitions = list(spec.groups)
        reader = PartitionReader(
            self.bootstrap_servers, self.topic(spec.boundary), partitions, group_id=self.group(spec.boundary)
        )
        await reader.open(spec.offsets)
        consumer = reader.consumer
        tps = [TopicPartition(reader.topic, p) for p in partitions]
        beginnings = await consumer.beginning_offsets(tps) if tps else {}
        inbox = Inbox(
            partitions,
            spec.origins,
            self.attempt,
            start_offsets={p: int(o) for p, o in spec.offsets.items() if p not in reader.reset},
            beginnings={tp.partition: int(o) for tp, o in beginnings.items()},
        )
        receiver = _Receiver(reader, inbox)
        receiver.task = asyncio.create_task(self._fetch_loop(receiver))
        self._receivers[(spec.boundary, spec.groups)] = receiver

    def topic(self, boundary: int) -> str:
        return topics.topic_name(self.job_id, boundary)

    def group(self, boundary: int) -> str:
        """The consumer group the readers of ``boundary`` report their progress under."""
        return f"{self.topic(boundary)}-readers"

    async def close(self) -> None:
        monitors, self._monitors = self._monitors, []
        for monitor in monitors:
            monitor.cancel()
        await asyncio.gather(*monitors, return_exceptions=True)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        receivers, self._receivers = self._receivers, {}
        for receiver in receivers.values():
            if receiver.task is not None:
                receiver.task.cancel()
        await asyncio.gather(
            *(r.task for r in receivers.values() if r.task is not None), return_exceptions=True
        )
        for receiver in receivers.values():
            await receiver.reader.close()
        producers, self._producers = self._producers, {}
        for producer in producers.values():
            await producer.close()

    # -------------------------------------------------------------------------------- sending

    def send(
        self,
        boundary: int,
        origin: str,
        groups: Mapping[int, Batch],
        watermark: int,
        ingest_ms: float | None = None,
    ) -> None:
        key = (boundary, origin)
        mark = max(watermark, self._marks.get(key, MIN_WATERMARK))
        self._marks[key] = mark
        pending = self._pending.setdefault(key, {})
        ingest = self._ingest
        for group, records in groups.items():
            if not records:
                continue
            buffered = pending.get(group)
            if buffered is None:
                buffered = pending[group] = []
                if ingest_ms is not None:
                    ingest[(boundary, origin, group)] = ingest_ms
            elif ingest_ms is not None:
                channel = (boundary, origin, group)
                earliest = ingest.get(channel)
                if earliest is None or ingest_ms < earliest:
                    ingest[channel] = ingest_ms
            buffered.extend(records)
            if len(buffered) >= self.coalesce_records:
                self._encode(boundary, origin, group, pending.pop(group))
        last_mark, when = self._broadcast.get(key, (MIN_WATERMARK, 0.0))
        now = time.monotonic()
        if mark > last_mark and (mark == MAX_WATERMARK or now - when >= self.watermark_interval_s):
            self._broadcast_mark(boundary, origin, mark, now=now)
        elif pending and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self.linger_s, self._encode_all)

    def _encode(self, boundary: int, origin: str, group: int, records: Batch) -> None:
        """Writes buffered records of one channel as deliveries; the last carries the origin's mark
        (which is after every record sent so far, so after these)."""
        producer = self._producers[boundary]
        mark = self._marks[(boundary, origin)]
        ingest = self._ingest.pop((boundary, origin, group), None)
        for start in range(0, len(records), MAX_RECORDS_PER_MESSAGE):
            chunk = records[start : start + MAX_RECORDS_PER_MESSAGE]
            last = start + MAX_RECORDS_PER_MESSAGE >= len(records)
            position = self._next_position(boundary, origin, group)
            producer.write(
                group,
                wire.encode_delivery(
                    self.attempt, origin, position, mark if last else MIN_WATERMARK, chunk, ingest
                ),
            )

    def _encode_origin(self, boundary: int, origin: str) -> set[int]:
        """Writes every buffered record of the origin; returns the key groups written to."""
        pending = self._pending.pop((boundary, origin), None)
        if not pending:
            return set()
        for group, records in pending.items():
            self._encode(boundary, origin, group, records)
        return set(pending)

    def _encode_all(self) -> None:
        self._linger = None
        for boundary, origin in list(self._pending):
            self._encode_origin(boundary, origin)

    def _broadcast_mark(self, boundary: int, origin: str, mark: int, now: float) -> None:
        """Sends the origin's mark to every key group of the stage: buffered records first (they
        carry it), a mark-only delivery to the others."""
        written = self._encode_origin(boundary, origin)
        producer = self._producers[boundary]
        tasks = self._readers.get(boundary)
        if tasks is not None and mark != MAX_WATERMARK:
            positions = self._positions
            for groups in tasks:
                first = groups.start
                requires = [
                    [g, positions[(boundary, origin, g)]]
                    for g in groups
                    if g != first and (boundary, origin, g) in positions
                ]
                position = self._next_position(boundary, origin, first)
                producer.write(first, wire.encode_task_mark(self.attempt, origin, position, mark, requires))
        else:  # the end of input goes to every key group: each channel learns its origin finished
            for group in self._fanout[boundary]:
                if group in written:
                    continue
                position = self._next_position(boundary, origin, group)
                producer.write(group, wire.encode_delivery(self.attempt, origin, position, mark, []))
        self._broadcast[(boundary, origin)] = (mark, now)

    def _next_position(self, boundary: int, origin: str, group: int) -> int:
        key = (boundary, origin, group)
        position = self._positions.get(key, 0) + 1
        self._positions[key] = position
        return position

    def send_barrier(self, boundary: int, origin: str, checkpoint_id: int) -> None:
        """Writes the barrier of ``checkpoint_id`` to every key group, after everything sent before."""
        producer = self._producers[boundary]
        self._flush_marks(boundary, origin)
        self._encode_origin(boundary, origin)
        for group in self._fanout[boundary]:
            position = self._next_position(boundary, origin, group)
            producer.write(group, wire.encode_barrier(self.attempt, origin, position, checkpoint_id))

    def _flush_marks(self, boundary: int, origin: str) -> None:
        mark = self._marks.get((boundary, origin), MIN_WATERMARK)
        if mark > self._broadcast.get((boundary, origin), (MIN_WATERMARK, 0.0))[0]:
            self._broadcast_mark(boundary, origin, mark, now=time.monotonic())

    def publish(self) -> None:
        """Writes what is buffered and every origin's latest watermark now, without waiting for the
        broker (a quiet origin's event time still reaches its downstream tasks)."""
        for boundary, origin in list(self._marks):
            self._flush_marks(boundary, origin)
        self._encode_all()

    async def flush(self) -> None:
        for boundary, origin in list(self._marks):
            self._flush_marks(boundary, origin)
        self._encode_all()
        for producer in self._producers.values():
            await producer.flush()

    def lagging(self) -> bool:
        """The readers of a boundary this worker writes to have more than ``max_backlog_messages``
        not taken yet: read no more input for now (see the module doc)."""
        limit = self.max_backlog_messages
        return limit is not None and any(n > limit for n in self._backlog.values())

    def backlog(self, boundary: int) -> int | None:
        """The messages of ``boundary``'s topic its readers had not taken at the last check."""
        return self._backlog.get(boundary)

    async def _watch_backlog(self, boundary: int, backlog: Backlog) -> None:
        try:
            while True:
                try:
                    self._backlog[boundary] = await backlog.messages()
                except KafkaError as e:  # keep the last figure: a broker hiccup neither stops nor frees
                    log.info("backlog of %s unknown (%s: %s)", self.topic(boundary), type(e).__name__, e)
                await asyncio.sleep(self.backlog_check_s)
        finally:
            await backlog.close()

    async def wait_for_room(self) -> None:
        """Backpressure for senders: returns once every producer's queue is under its bound."""
        for producer in self._producers.values():
            await producer.wait_for_room()

    # ------------------------------------------------------------------------------ receiving

    def receive(self, boundary: int, groups: range) -> list[Delivery]:
        receiver = self._receivers[(boundary, groups)]
        if receiver.failure is not None:
            raise receiver.failure
        ready, receiver.ready = receiver.ready, []
        receiver.taken = receiver.fetched  # everything fetched when ``ready`` was last filled
        receiver.ready_records = 0
        receiver.drained.set()
        return ready

    async def wait(self, boundary: int, groups: range, timeout_s: float) -> None:
        """Waits (at most ``timeout_s``) until something is ready for the task (or it is aligned)."""
        receiver = self._receivers[(boundary, groups)]
        if receiver.ready or receiver.aligned is not None or receiver.failure is not None:
            return
        receiver.wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.wakeup.wait(), timeout_s)

    def aligned(self, boundary: int, groups: range) -> int | None:
        """The checkpoint the task is aligned at once ``receive`` returned everything before it."""
        receiver = self._receivers[(boundary, groups)]
        return receiver.aligned if not receiver.ready else None

    def finished(self, boundary: int, groups: range) -> bool:
        """Every origin of the task reached its end of input and everything it sent was received."""
        receiver = self._receivers[(boundary, groups)]
        return receiver.inbox.finished and not receiver.ready

    def snapshot(self, boundary: int, groups: range) -> dict[str, Any]:
        """What the task's checkpoint keeps of its input: how far each partition was read, and the
        attempt (a restore must run in a later one)."""
        inbox = self._receivers[(boundary, groups)].inbox
        return {"attempt": self.attempt, "offsets": {str(p): o for p, o in sorted(inbox.offsets().items())}}

    def release(self, boundary: int, groups: range, checkpoint_id: int) -> None:
        """The task snapshotted at ``checkpoint_id``: its input moves on."""
        receiver = self._receivers[(boundary, groups)]
        receiver.inbox.release(checkpoint_id)
        receiver.aligned = None
        receiver.released.set()

    async def _fetch_loop(self, receiver: _Receiver) -> None:
        reader, inbox = receiver.reader, receiver.inbox
        consumer = reader.consumer
        try:
            last_check = last_report = time.monotonic()
            while True:
                while receiver.ready_records >= MAX_READY_RECORDS and receiver.aligned is None:
                    receiver.drained.clear()
                    await receiver.drained.wait()  # the task takes what is ready first
                if receiver.aligned is not None:
                    await receiver.released.wait()  # nothing moves until the task snapshotted
                    receiver.released.clear()
                    for partition, offset in inbox.seeks().items():
                        await reader.seek(partition, offset)
                fetched = await reader.poll(0.1)
                touched = set()
                for f in fetched:
                    inbox.offer(f.partition, f.offset, f.value)
                    touched.add(f.partition)
                now = time.monotonic()
                if now - last_check > 1.0:
                    touched.update(reader.partitions)
                    last_check = now
                for partition in touched:
                    inbox.check_position(
                        partition, await consumer.position(TopicPartition(reader.topic, partition))
                    )
                for partition, offset in inbox.seeks().items():
                    await reader.seek(partition, offset)
                for item in inbox.take():
                    if isinstance(item, Aligned):
                        receiver.aligned = item.checkpoint_id
                    else:
                        receiver.ready.append(item)
                        receiver.ready_records += len(item.records)
                receiver.fetched = inbox.offsets()
                if not receiver.ready:
                    receiver.taken = receiver.fetched
                if receiver.ready or receiver.aligned is not None:
                    receiver.wakeup.set()
                if now - last_report >= self.backlog_check_s:
                    last_report = now
                    await reader.report(receiver.taken)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("reading %s failed: %s: %s", reader.topic, type(e).__name__, e)
            receiver.failure = e
            receiver.wakeup.set()


if TYPE_CHECKING:

    def _is_an_exchange(exchange: KafkaExchange) -> Exchange:
        return exchange  # mypy checks that KafkaExchange implements the protocol
