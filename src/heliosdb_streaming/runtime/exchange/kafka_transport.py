"""Moving internal-topic messages through Kafka: an ordered producer and a partition reader.

:class:`OrderedProducer` keeps every partition's order, which exactly-once without broker
transactions depends on (see ``inbox.py``): at most one batch per partition is in flight, and a
batch that fails is sent again, bounded and logged, before any later message of that partition. A
retried batch may land twice (its acknowledgement was lost, not its write): the reader drops the
copy by position. What must never happen, and cannot here, is a later batch landing before an
earlier one, which would make the earlier one's replay look like a duplicate. Batching comes from
the queue: whatever accumulated for a partition while its previous batch was in flight goes out as
the next batch. Writers never await per message; :meth:`OrderedProducer.wait_for_room` bounds the
bytes queued (backpressure).

:class:`PartitionReader` reads chosen partitions of one topic by manual assignment (no consumer
group: the job decides which task reads which key groups) from given offsets. tansu can answer a
fetch at an offset past the end of a (recreated) topic with nothing, forever; the reader learns each
partition's high watermark when it opens and starts a partition whose restored offset is past it
from the beginning. With a ``group_id`` it reports how far its task has taken each partition as
the group's committed offsets (``report``): progress only, never where it resumes (a restored task
resumes from its snapshot's offsets). :class:`Backlog` reads those commits on the writing side: the
messages of the topic the readers have not taken yet, which bounds how far upstream runs ahead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 512 * 1024


class ExchangeTransportError(RuntimeError):
    """A partition's messages could not be written after the bounded retries; the task must fail."""


class OrderedProducer:
    """Writes messages to partitions of one topic, each partition in order, one batch in flight each."""

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        topic: str,
        *,
        client_id: str = "heliosdb-exchange",
        max_queued_bytes: int = 32 * 1024 * 1024,
        retries: int = 8,
        retry_backoff_s: float = 0.2,
    ) -> None:
        self.bootstrap_servers = list(bootstrap_servers)
        self.topic = topic
        self.client_id = client_id
        self.max_queued_bytes = max_queued_bytes
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self._producer: AIOKafkaProducer | None = None
        self._queues: dict[int, list[bytes]] = {}
        self._wakeups: dict[int, asyncio.Event] = {}
        self._senders: dict[int, asyncio.Task[None]] = {}
        self._in_flight: dict[int, int] = {}  # partition -> messages of its batch in flight
        self._queued_bytes = 0
        self._progress = asyncio.Condition()
        self._failure: BaseException | None = None

    async def open(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=False,  # tansu refuses InitProducerId; order comes from one batch in flight
            linger_ms=0,
            max_batch_size=MAX_BATCH_BYTES,
            request_timeout_ms=30_000,
        )
        await producer.start()
        self._producer = producer

    def write(self, partition: int, value: bytes) -> None:
        """Queues ``value`` for ``partition`` after everything queued for it before (no I/O here)."""
        if self._failure is not None:
            raise ExchangeTransportError(str(self._failure)) from self._failure
        queue = self._queues.get(partition)
        if queue is None:
            queue = self._queues[partition] = []
            self._wakeups[partition] = asyncio.Event()
            self._senders[partition] = asyncio.create_task(self._send_loop(partition))
        queue.append(value)
        self._queued_bytes += len(value)
        self._wakeups[partition].set()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    async def wait_for_room(self) -> None:
        """Returns once the bytes queued and not yet acknowledged are under the bound."""
        async with self._progress:
            await self._progress.wait_for(
                lambda: self._queued_bytes < self.max_queued_bytes or self._failure is not None
            )
        self._raise_failure()

    async def flush(self, timeout_s: float = 60.0) -> None:
        """Waits until every message written so far is acknowledged; raises if a partition failed."""
        async with self._progress:
            await asyncio.wait_for(
                self._progress.wait_for(lambda: self._queued_bytes == 0 or self._failure is not None),
                timeout_s,
            )
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise ExchangeTransportError(
                f"writing to {self.topic!r} failed: {self._failure}"
            ) from self._failure

    async def _send_loop(self, partition: int) -> None:
        queue = self._queues[partition]
        wakeup = self._wakeups[partition]
        try:
            while True:
                await wakeup.wait()
                wakeup.clear()
                while queue:
                    values = self._take(queue)
                    await self._send_with_retries(partition, values)
                    async with self._progress:
                        self._queued_bytes -= sum(len(v) for v in values)
                        self._progress.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # reported by write/flush/wait_for_room; the task must fail
            self._failure = e
            async with self._progress:
                self._progress.notify_all()

    @staticmethod
    def _take(queue: list[bytes]) -> list[bytes]:
        """The next batch: queued values from the front, up to the batch size (at least one)."""
        size = 0
        count = 0
        for value in queue:
            if count and size + len(value) > MAX_BATCH_BYTES - 1024:
                break
            size += len(value) + 64
            count += 1
        values = queue[:count]
        del queue[:count]
        return values

    async def _send_with_retries(self, partition: int, values: list[bytes]) -> None:
        for attempt in range(self.retries + 1):
            try:
                await self._send_once(partition, values)
                return
            except KafkaError as e:
                if attempt == self.retries:
                    raise
                delay = min(self.retry_backoff_s * 2**attempt, 5.0)
                log.warning(
                    "batch of %d message(s) to %s[%d] failed (%s: %s); resending in %.1fs (retry %d of %d)",
                    len(values),
                    self.topic,
                    partition,
                    type(e).__name__,
                    e,
                    delay,
                    attempt + 1,
                    self.retries,
                )
                await asyncio.sleep(delay)

    async def _send_once(self, partition: int, values: list[bytes]) -> None:
        """Sends one batch and waits for its acknowledgement (the one request in flight for it)."""
        producer = self._producer
        if producer is None:
            raise ExchangeTransportError("write before open()")
        builder = producer.create_batch()
        for value in values:
            if builder.append(key=None, value=value, timestamp=None) is None:
                raise ExchangeTransportError(f"a message of {len(value)} bytes does not fit into a batch")
        future = await producer.send_batch(builder, self.topic, partition=partition)
        await future

    async def close(self) -> None:
        """Stops the senders (what is still queued is not sent: flush first) and the producer."""
        senders, self._senders = self._senders, {}
        for task in senders.values():
            task.cancel()
        await asyncio.gather(*senders.values(), return_exceptions=True)
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


@dataclass(frozen=True, slots=True)
class Fetched:
    """One message read from an internal topic."""

    partition: int
    offset: int
    value: bytes | None


class PartitionReader:
    """Reads ``partitions`` of ``topic`` by manual assignment, from restored offsets or the beginning."""

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        topic: str,
        partitions: Sequence[int],
        *,
        client_id: str = "heliosdb-exchange",
        group_id: str | None = None,
    ) -> None:
        self.bootstrap_servers = list(bootstrap_servers)
        self.topic = topic
        self.partitions = sorted(partitions)
        self.client_id = client_id
        self.group_id = group_id
        self._reported: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._early: list[Fetched] = []
        self.reset: set[int] = set()  # partitions whose restored offset was past their end

    async def open(self, offsets: Mapping[int, int], probe_timeout_s: float = 5.0) -> None:
        """Assigns the partitions and seeks: a restored offset past a partition's end (the topic was
        created anew since) starts that partition at its beginning."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,  # only to report progress (``report``): never subscribes
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        self._consumer = consumer
        tps = {p: TopicPartition(self.topic, p) for p in self.partitions}
        consumer.assign(list(tps.values()))
        restored = {p: int(o) for p, o in offsets.items() if p in tps and int(o) > 0}
        fresh = [tps[p] for p in self.partitions if p not in restored]
        if fresh:
            await consumer.seek_to_beginning(*fresh)
        for p, offset in restored.items():
            consumer.seek(tps[p], offset)
        if restored:
            await self._reset_past_end(consumer, {tps[p]: o for p, o in restored.items()}, probe_timeout_s)

    async def _reset_past_end(
        self, consumer: AIOKafkaConsumer, restored: dict[TopicPartition, int], timeout_s: float
    ) -> None:
        """Learns the high watermark of each restored partition from a first fetch; one whose offset
        lies past it starts at the beginning. Messages that first fetch returns are kept for poll."""
        pending = dict(restored)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            data = await consumer.getmany(*pending, timeout_ms=100)
            for tp, messages in data.items():
                self._early.extend(Fetched(tp.partition, m.offset, m.value) for m in messages)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                if pending[tp] > highwater:
                    log.warning(
                        "internal topic %s[%d] ends at %d, before the restored offset %d: it was created "
                        "anew; reading it from the beginning",
                        tp.topic,
                        tp.partition,
                        highwater,
                        pending[tp],
                    )
                    await consumer.seek_to_beginning(tp)
                    self.reset.add(tp.partition)
                del pending[tp]
        if pending:
            log.warning(
                "no high watermark of %s within %.0fs; reading from the restored offsets",
                sorted(pending),
                timeout_s,
            )

    async def poll(self, timeout_s: float, max_records: int = 10_000) -> list[Fetched]:
        """The next messages of the assigned partitions, each partition in offset order."""
        consumer = self._consumer
        if consumer is None:
            raise ExchangeTransportError("poll before open()")
        if self._early:
            early, self._early = self._early, []
            return early
        data = await consumer.getmany(timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records)
        return [Fetched(tp.partition, m.offset, m.value) for tp, messages in data.items() for m in messages]

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise ExchangeTransportError("not open")
        return self._consumer

    async def seek(self, partition: int, offset: int | None) -> None:
        """Reads ``partition`` again from ``offset`` (None: its beginning)."""
        consumer = self._consumer
        if consumer is None:
            raise ExchangeTransportError("seek before open()")
        self._early = [f for f in self._early if f.partition != partition]
        tp = TopicPartition(self.topic, partition)
        if offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)

    async def report(self, offsets: Mapping[int, int]) -> None:
        """Commits, as the group's offsets, how far the task has taken each partition (what changed
        since the last report); a failure is logged and retried with the next report."""
        consumer = self._consumer
        changed = {p: o for p, o in offsets.items() if self._reported.get(p) != o}
        if consumer is None or self.group_id is None or not changed:
            return
        try:
            await consumer.commit({TopicPartition(self.topic, p): o for p, o in changed.items()})
        except KafkaError as e:
            log.info("progress report on %s failed (%s: %s)", self.topic, type(e).__name__, e)
            return
        self._reported.update(changed)

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()


class Backlog:
    """The messages of ``topic`` its readers have not taken yet: end offset minus the offset each
    partition's reader reported (group ``group_id``), or minus the partition's start when it has
    reported nothing; summed over ``partitions``. Asked by the writing side every few hundred ms."""

    def __init__(
        self, bootstrap_servers: Sequence[str], topic: str, partitions: Sequence[int], group_id: str
    ) -> None:
        self.bootstrap_servers = list(bootstrap_servers)
        self.topic = topic
        self.group_id = group_id
        self._tps = [TopicPartition(topic, p) for p in partitions]
        self._consumer: AIOKafkaConsumer | None = None

    async def open(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            client_id="heliosdb-exchange-backlog",
            enable_auto_commit=False,
        )
        await consumer.start()
        self._consumer = consumer

    async def messages(self) -> int:
        consumer = self._consumer
        if consumer is None:
            raise ExchangeTransportError("backlog asked before open()")
        ends = await consumer.end_offsets(self._tps)
        starts = await consumer.beginning_offsets(self._tps)
        # aiokafka has no public call for several partitions' commits in one request
        committed = await consumer._coordinator.fetch_committed_offsets(self._tps)
        total = 0
        for tp in self._tps:
            done = committed.get(tp)
            taken = done.offset if done is not None and done.offset >= 0 else starts.get(tp, 0)
            total += max(int(ends.get(tp, 0)) - int(taken), 0)
        return total

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
