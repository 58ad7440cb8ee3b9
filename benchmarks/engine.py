"""Engine throughput and latency per worker: ``python -m benchmarks.engine [--events N] [--quix]``.

Each pipeline runs the real worker code in this process (one worker, one partition) until N input
events are processed, and prints events/s and p50/p99 ingestion-to-sink latency; the (f) rows pace
datagen at 5,000 and 50,000 ev/s to show the latency a moderate load sees (a batch goes downstream as
soon as the source has nothing more ready). Kafka pipelines read a topic prefilled on a tansu broker
started here; the (h) rows produce to a topic at 5,000 and 50,000 ev/s while the job reads it and
measure latency from each record's produce time (so the time it waits at the broker counts; the
producer shares this process, so the events/s column shows the rate it reached). (g) is the
repartitioned pipeline: a topic of 4 partitions keyed by card (declared
``partitioned_by: card_id``), ``key_by merchant``, a 1-minute tumbling count and sum per merchant; at
parallelism 1 the regrouped records are routed in process, no broker in between.

``--quix`` (or ``QUIX=1``; needs ``pip install -e '.[bench]'``) runs (c), (d) and (g) in Quix Streams
on the same topics and prints our/their ratio. Quix's (g) is ``group_by("merchant")``, which
repartitions through a Kafka topic on the same broker: the comparison is ours in process at
parallelism 1 against theirs through the broker, the way each runs one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks.quix import Seen, counted, quix_arguments, quix_events_per_second, versus
from benchmarks.services import datagen_batches, prefill_topic, prefilled_broker
from benchmarks.table import print_table
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.runtime.connectors.kafka import KafkaSourceReader
from heliosdb_streaming.runtime.contracts import SplitBatch
from heliosdb_streaming.runtime.worker import Worker
from heliosdb_streaming.testing.tansu import create_topic

FILTER = {"type": "filter", "config": {"condition": "amount > 100"}}
CEP = {
    "type": "cep",
    "config": {
        "pattern": "A B+ C",
        "key": "card_id",
        "define": {"A": "amount < 50", "B": "amount >= 50 and amount < 500", "C": "amount >= 500"},
        "window": "1h",
    },
}
WINDOW = {
    "type": "window",
    "config": {"kind": "tumbling", "size": "1m", "key": "card_id", "aggregates": {"total": "sum(amount)"}},
}
DISCARD = {"type": "discard", "config": {}}
MAP = {"type": "map", "config": {"fields": {"card_id": "card_id", "amount": "amount * 2"}}}
KEY_BY_MERCHANT = {"type": "key_by", "config": {"key": "merchant"}}
MERCHANT_WINDOW = {
    "type": "window",
    "config": {"kind": "tumbling", "size": "1m", "aggregates": {"n": "count(*)", "total": "sum(amount)"}},
}
REPARTITIONED_PARTITIONS = 4
"""Partitions of the (g) topic: with more than one split, key_by merchant regroups across them."""
QUIX_LABELS = {
    "(c)": ("Quix Streams (c) kafka -> filter", "-"),
    "(d)": ("Quix Streams (d) kafka -> tumbling sum/key", "rocksdb"),
    "(g)": ("Quix Streams (g) kafka x4 -> group_by merchant -> tumbling", "rocksdb"),
}
LATENCY_RATES = (5_000, 50_000)
"""Rates (events/s) of the latency rows: a moderate rate must not wait for the periodic flush."""


def job(
    name: str, source: dict[str, Any], steps: list[dict[str, Any]], sink: dict[str, Any], backend: str
) -> JobConfig:
    return JobConfig.from_dict(
        {
            "name": name,
            "config": {"parallelism": 1, "state_backend": backend, "restart_strategy": "none"},
            "sources": [source],
            "transformations": steps,
            "sinks": [sink],
        }
    )


@dataclass(frozen=True, slots=True)
class Measured:
    """One pipeline run: its throughput and its ingestion-to-sink latency."""

    events_per_s: float
    p50_ms: float
    p99_ms: float
    events: int


async def measure_worker(config: JobConfig, events: int, job_dir: Path) -> Measured:
    """Runs one in-process worker until ``events`` are read. The rate is the one Quix Streams' runner
    measures (``benchmarks.quix``): from the first batch the pipeline has taken in to the batch
    that holds the last event, so the worker's start (opening the source, the state backend) and
    its stop are not in it, for ours as for theirs."""
    worker = Worker(config, job_id=f"bench-{uuid.uuid4()}", index=0, attempt=1, job_dir=job_dir, channel=None)
    first: tuple[float, int] | None = None  # (time, events in) when the first batch was in
    last: tuple[float, int] = (0.0, 0)

    async def stop_when_done() -> None:
        nonlocal first, last
        while (n := worker.counters.events_in) < events:
            if first is None and n > 0:
                first = (time.perf_counter(), n)
            await asyncio.sleep(0.001)
        last = (time.perf_counter(), n)
        worker.stopping.set()

    watcher = asyncio.create_task(stop_when_done())
    started = time.perf_counter()
    code = await worker.run()
    watcher.cancel()
    if code != 0:
        raise RuntimeError(f"{config.name} failed with exit code {code}")
    n = worker.counters.events_in
    if first is None or last[0] <= first[0]:  # all of it in one batch: only the whole run can tell
        first, last = (started, 0), (time.perf_counter(), n)
    latency = worker.counters.latency
    rate = (last[1] - first[1]) / (last[0] - first[0])
    return Measured(rate, latency.quantile(0.5), latency.quantile(0.99), n)


async def run_worker(config: JobConfig, events: int, job_dir: Path) -> tuple[float, float, int]:
    """Runs one in-process worker until ``events`` are read; returns (events/s, p99 ms, events)."""
    run = await measure_worker(config, events, job_dir)
    return run.events_per_s, run.p99_ms, run.events


def datagen_source(count: int, **settings: Any) -> dict[str, Any]:
    """The datagen source of the pipelines: one partition, seed 1, 10,000 cards, ``count`` events."""
    return {
        "type": "datagen",
        "config": {"partitions": 1, "seed": 1, "keys": 10_000, "count": count, **settings},
    }


def kafka_source(bootstrap: str, topic: str, **settings: Any) -> dict[str, Any]:
    """The Kafka source of the pipelines: ``topic`` read from its earliest offset."""
    config = {"bootstrap_servers": [bootstrap], "topic": topic, "start_from": "earliest", **settings}
    return {"type": "kafka", "config": config}


async def best_of_two(config: JobConfig, events: int, tmp_path: Path) -> tuple[float, int]:
    """(events/s, events) of the better of two runs: the first run of a process also warms it up."""
    best = (0.0, 0)
    for _ in range(2):
        run = await measure_worker(config, events, tmp_path / uuid.uuid4().hex)
        best = max(best, (run.events_per_s, run.events))
    return best


PRODUCED = "produced_ms"
"""Where the (h) rows' Kafka source puts each record's Kafka timestamp (the producer's send time)."""


@contextlib.contextmanager
def latency_from_produce_time() -> Iterator[None]:
    """Within it, a Kafka batch counts as ingested when its first record was produced, not when the
    source read it: the (h) rows' latency is produce-to-sink, so it includes the time a record
    waits at the broker before a fetch hands it on."""
    poll = KafkaSourceReader.poll

    async def produced(self: KafkaSourceReader, max_records: int, timeout_s: float) -> list[SplitBatch]:
        batches = await poll(self, max_records, timeout_s)
        return [dataclasses.replace(b, ingest_ms=b.records[0][PRODUCED]) if b.records else b for b in batches]

    KafkaSourceReader.poll = produced  # type: ignore[method-assign]
    try:
        yield
    finally:
        KafkaSourceReader.poll = poll  # type: ignore[method-assign]


async def produce_at(bootstrap: str, topic: str, rate: int, records: list[dict[str, Any]]) -> None:
    """Produces ``records`` to ``topic`` at ``rate`` a second, each as soon as it is due."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        started, sent = time.monotonic(), 0
        while sent < len(records):
            due = min(len(records), int((time.monotonic() - started) * rate) + 1)
            for record in records[sent:due]:
                await producer.send(topic, orjson.dumps(record), key=record["card_id"].encode())
            sent = due
            await asyncio.sleep(0.001)
        await producer.flush()
    finally:
        await producer.stop()


async def run_ours(
    n: int, bootstrap: str, topic: str, keyed_topic: str, tmp_path: Path
) -> list[tuple[str, str, float, float, float, int]]:
    rows: list[tuple[str, str, float, float, float, int]] = []

    async def measure(
        label: str,
        source: dict[str, Any],
        steps: list[dict[str, Any]],
        sink: dict[str, Any],
        backend: str,
        events: int,
    ) -> None:
        run = await measure_worker(
            job(label, source, steps, sink, backend), events, tmp_path / uuid.uuid4().hex
        )
        rows.append((label, backend, run.events_per_s, run.p50_ms, run.p99_ms, run.events))

    datagen = datagen_source(n)
    await measure("(a) datagen -> filter -> discard", datagen, [FILTER], DISCARD, "memory", n)
    await measure("(b) datagen -> filter -> CEP -> discard", datagen, [FILTER, CEP], DISCARD, "memory", n)
    for rate in LATENCY_RATES:  # latency at a set rate: ~4 s of events each
        count = rate * 4
        paced = datagen_source(count, rate_per_sec=rate)
        label = f"(f) datagen {rate:,} ev/s -> filter -> map -> discard"
        await measure(label, paced, [FILTER, MAP], DISCARD, "memory", count)
    kafka = kafka_source(bootstrap, topic)
    dsn = os.environ.get("HELIOS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    pg_sink = {
        "type": "database",
        "config": {"connection_string": dsn, "table": f"bench_{uuid.uuid4().hex[:8]}", "batch_size": 5000},
    }
    await measure("(c) kafka -> filter -> discard", kafka, [FILTER], DISCARD, "memory", n)
    await measure("(d) kafka -> tumbling sum/key -> discard", kafka, [WINDOW], DISCARD, "memory", n)
    await measure("(d) kafka -> tumbling sum/key -> discard", kafka, [WINDOW], DISCARD, "rocksdb", n)
    await measure("(e) kafka -> filter -> PostgreSQL", kafka, [FILTER], pg_sink, "memory", n)
    keyed = kafka_source(bootstrap, keyed_topic, partitioned_by="card_id")
    label = f"(g) kafka x{REPARTITIONED_PARTITIONS} by card -> key_by merchant -> tumbling/merchant"
    await measure(label, keyed, [KEY_BY_MERCHANT, MERCHANT_WINDOW], DISCARD, "memory", n)
    for rate in LATENCY_RATES:  # a topic produced to at a set rate while the job reads it: ~4 s each
        count = rate * 4
        live = f"{topic}-live{rate}"
        await create_topic(bootstrap, live, 1)
        records = [r for batch in await datagen_batches(count, 10_000) for r in batch]
        label = f"(h) kafka live {rate:,} ev/s -> filter -> map -> discard"
        source = kafka_source(bootstrap, live, event_time_field=PRODUCED)
        with latency_from_produce_time():
            producer = asyncio.create_task(produce_at(bootstrap, live, rate, records))
            await measure(label, source, [FILTER, MAP], DISCARD, "memory", count)
            await producer
    return rows


def quix_pipelines(bootstrap: str, topic: str, keyed_topic: str, n: int, tmp_path: Path) -> dict[str, float]:
    """Quix Streams on the same topics: (c) filter, (d) tumbling sum per card (messages are keyed by
    card, which is what Quix keys its state by) and (g) ``group_by`` merchant, which repartitions
    through a Kafka topic, then a tumbling count and sum per merchant; events/s of each."""
    from datetime import timedelta

    def filtered(sdf: Any, seen: Seen) -> Any:
        return sdf.apply(counted(seen)).filter(lambda v: v["amount"] > 100)

    def windowed(sdf: Any, seen: Seen) -> Any:
        sdf = sdf.apply(counted(seen)).apply(lambda v: v["amount"])
        return sdf.tumbling_window(timedelta(minutes=1)).sum().final()

    def regrouped(sdf: Any, seen: Seen) -> Any:
        # counted after the repartition: an event is seen once it has come back through the broker
        sdf = sdf.group_by("merchant").apply(counted(seen))
        window = sdf.tumbling_window(timedelta(minutes=1))
        return window.agg(n=Count(), total=Sum("amount")).final()

    from quixstreams.dataframe.windows import Count, Sum

    return {
        "(c)": quix_events_per_second(bootstrap, topic, n, str(tmp_path / "q1"), filtered),
        "(d)": quix_events_per_second(bootstrap, topic, n, str(tmp_path / "q2"), windowed),
        "(g)": quix_events_per_second(bootstrap, keyed_topic, n, str(tmp_path / "q3"), regrouped),
    }


def main() -> None:
    args = quix_arguments(__doc__, events=1_000_000)
    n = args.events
    quix: dict[str, float] = {}
    with prefilled_broker(n) as (bootstrap, topic, tmp_path):
        keyed_topic = f"{topic}-x{REPARTITIONED_PARTITIONS}"
        asyncio.run(prefill_topic(bootstrap, keyed_topic, n, REPARTITIONED_PARTITIONS))
        rows = asyncio.run(run_ours(n, bootstrap, topic, keyed_topic, tmp_path))
        if args.quix:  # Quix installs signal handlers, so it runs in the main thread, after our loop
            quix = quix_pipelines(bootstrap, topic, keyed_topic, n, tmp_path)
    print_table(
        [
            ("pipeline", "<62"),
            ("state", "<8"),
            ("events/s", ">11,.0f"),
            ("p50 ms", ">8.1f"),
            ("p99 ms", ">8.1f"),
            ("events", ">10,"),
            ("vs Quix", ">8"),
        ],
        [(*row, versus(row[2], quix.get(row[0][:3]))) for row in rows]
        + [(*QUIX_LABELS[key], eps) for key, eps in quix.items()],
    )
    print(f"\n{os.cpu_count()} cores, Python {sys.version.split()[0]}, {n:,} events per pipeline, one worker")


if __name__ == "__main__":
    main()
