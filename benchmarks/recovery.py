"""Recovery time after a worker is SIGKILLed: ``python -m benchmarks.recovery [--kills 5]``.

A real job (control plane in this process, workers as subprocesses) reads a Kafka topic on a tansu
broker started here, which a producer feeds at ``--rate`` events/s with a sequence number, and writes
to PostgreSQL. Each round SIGKILLs one worker and measures:

* ``running``: kill -> the restarted run's workers are all connected (restart delay 0, so this is
  detection + process start + restore of the latest completed checkpoint);
* ``caught up``: kill -> the sink holds the event that was produced at the moment of the kill
  (replay from the checkpoint done, lag gone). With ``--delivery exactly_once`` the output becomes
  visible only at the next completed checkpoint, so that run includes up to one interval more.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.testing.tansu import create_topic, run_tansu

PARTITIONS = 2


class Producer:
    """Feeds the topic at a steady rate; ``sent`` is the highest sequence number acknowledged."""

    def __init__(self, bootstrap: str, topic: str, rate: int) -> None:
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.sent = -1
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            seq = 0
            tick = 0.02
            per_tick = max(1, int(self.rate * tick))
            next_at = time.perf_counter()
            while not self.stopping.is_set():
                for _ in range(per_tick):
                    card = f"card-{seq % 1000:04d}"
                    event = {
                        "seq": seq,
                        "card_id": card,
                        "amount": seq % 500,
                        "timestamp": int(time.time() * 1000),
                    }
                    await producer.send(self.topic, orjson.dumps(event), partition=seq % PARTITIONS)
                    seq += 1
                await producer.flush()
                self.sent = seq - 1
                next_at += tick
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        finally:
            await producer.stop()


def job_body(
    bootstrap: str, topic: str, dsn: str, table: str, delivery: str, interval_ms: int
) -> dict[str, Any]:
    return {
        "name": "recovery-bench",
        "config": {
            "parallelism": 2,
            "state_backend": "rocksdb",
            "checkpoint_interval_ms": interval_ms,
            "restart_strategy": {"type": "fixed_delay", "attempts": 1000, "delay_ms": 0},
        },
        "sources": [
            {
                "type": "kafka",
                "config": {"bootstrap_servers": [bootstrap], "topic": topic, "start_from": "earliest"},
            }
        ],
        "transformations": [{"type": "filter", "config": {"condition": "seq >= 0"}}],
        "sinks": [
            {
                "type": "database",
                "config": {"connection_string": dsn, "table": table, "delivery": delivery, "key": ["seq"]},
            }
        ],
    }


async def max_seq(conn: asyncpg.Connection, table: str) -> int:
    try:
        value = await conn.fetchval(f"SELECT max(seq) FROM {table}")
    except asyncpg.UndefinedTableError:
        return -1
    return -1 if value is None else int(value)


async def wait_for(predicate: Any, timeout_s: float, poll_s: float = 0.01) -> float:
    """Polls ``predicate`` (async) until true; returns the time it became true."""
    deadline = time.perf_counter() + timeout_s
    while not await predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(poll_s)
    return time.perf_counter()


async def measure(args: argparse.Namespace, bootstrap: str, home: Path) -> list[tuple[float, float]]:
    topic = f"recovery-{uuid.uuid4().hex[:8]}"
    table = f"recovery_{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, PARTITIONS)
    producer = Producer(bootstrap, topic, args.rate)
    feeding = asyncio.create_task(producer.run())
    conn = await asyncpg.connect(args.dsn)
    rounds: list[tuple[float, float]] = []
    try:
        async with JobManager(4, home=home) as jm:
            body = job_body(bootstrap, topic, args.dsn, table, args.delivery, args.interval_ms)
            job_id = await jm.submit_job(body)
            plane = jm.control_plane  # looked into to see when a run's workers are all connected

            async def caught_up_to(seq: int) -> bool:
                return await max_seq(conn, table) >= seq

            await wait_for(lambda: caught_up_to(0), 60)  # the job is reading and writing
            for _ in range(args.kills):
                await asyncio.sleep(args.interval_ms / 1000 * 2)  # let a few checkpoints complete
                attempt = plane.jobs[job_id].record.attempt
                victim = worker_processes(job_id)[0]
                target = producer.sent
                killed_at = time.perf_counter()
                victim.send_signal(signal.SIGKILL)

                async def restarted(attempt: int = attempt) -> bool:
                    run = plane.jobs[job_id].run
                    return run is not None and run.attempt > attempt and run.connected.is_set()

                running_at = await wait_for(restarted, 60)
                caught_at = await wait_for(lambda target=target: caught_up_to(target), 60)
                rounds.append((running_at - killed_at, caught_at - killed_at))
                status = await jm.get_job_status(job_id)
                assert status == JobStatus.RUNNING, status
            await jm.cancel_job(job_id)
    finally:
        producer.stopping.set()
        await feeding
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rate", type=int, default=5_000, help="events/s produced")
    parser.add_argument("--interval-ms", type=int, default=1_000, help="checkpoint interval")
    parser.add_argument("--delivery", choices=["at_least_once", "exactly_once"], default="at_least_once")
    parser.add_argument(
        "--dsn", default=os.environ.get("HELIOS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, run_tansu() as bootstrap:
        rounds = asyncio.run(measure(args, bootstrap, Path(tmp)))
    print()
    print(f"{'SIGKILL one worker ->':<28} {'p50 s':>8} {'max s':>8}")
    print("-" * 46)
    for label, values in [
        ("running (all connected)", [r for r, _ in rounds]),
        ("caught up", [c for _, c in rounds]),
    ]:
        print(f"{label:<28} {statistics.median(values):>8.2f} {max(values):>8.2f}")
    print(
        f"\n{len(rounds)} kills, {args.rate:,} events/s in, checkpoint every {args.interval_ms} ms, "
        f"delivery {args.delivery}, rocksdb, parallelism 2; "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
