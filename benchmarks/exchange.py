"""Throughput of one repartition through Kafka: ``python -m benchmarks.exchange [--events N]``.

One origin keys datagen-like transactions by merchant into a job's internal topic (128 key groups)
through ``KafkaExchange``; one downstream task reads every key group and counts what arrives, until
the origin's end-of-input mark. Both run in this process (with the tansu broker started here), so
the figure is a lower bound of what one worker sustains through one repartition: it pays for both
sides. Prints events/s for the sending side alone and end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK
from heliosdb_streaming.runtime.exchange import topics
from heliosdb_streaming.runtime.exchange.kafka_exchange import KafkaExchange, TaskInput
from heliosdb_streaming.runtime.exchange.keygroups import key_group
from heliosdb_streaming.testing.tansu import run_tansu

GROUPS = 128
BATCH = 1000


async def run(bootstrap: str, events: int) -> tuple[float, float]:
    job_id = f"bench{uuid.uuid4().hex[:6]}"
    up = KafkaExchange(bootstrap_servers=[bootstrap], job_id=job_id, max_parallelism=GROUPS, attempt=1)
    down = KafkaExchange(bootstrap_servers=[bootstrap], job_id=job_id, max_parallelism=GROUPS, attempt=1)
    await up.open({1: GROUPS}, [])
    await down.open({}, [TaskInput(1, range(GROUPS), ["s0-p0"])])
    records: list[dict[str, Any]] = [
        {"card_id": f"c{i % 10_000}", "merchant": f"m{i % 997}", "amount": i % 500, "ts": i}
        for i in range(events)
    ]
    received = 0

    async def consume() -> None:
        nonlocal received
        while True:
            for delivery in down.receive(1, range(GROUPS)):
                received += len(delivery.records)
                if delivery.watermark == MAX_WATERMARK:
                    return
            await down.wait(1, range(GROUPS), 0.1)

    try:
        started = time.perf_counter()
        consumer = asyncio.create_task(consume())
        for start in range(0, events, BATCH):
            batch = records[start : start + BATCH]
            groups: dict[int, list[dict[str, Any]]] = {}
            for r in batch:
                groups.setdefault(key_group(r["merchant"], GROUPS), []).append(r)
            up.send(1, "s0-p0", groups, batch[-1]["ts"])
            await up.wait_for_room()
        up.send(1, "s0-p0", {}, MAX_WATERMARK)
        await up.flush()
        sent = time.perf_counter() - started
        await asyncio.wait_for(consumer, 300)
        total = time.perf_counter() - started
        assert received == events, f"received {received} of {events}"
        return events / sent, events / total
    finally:
        await up.close()
        await down.close()
        await topics.delete_job_topics([bootstrap], job_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    args = parser.parse_args()
    with run_tansu() as bootstrap:
        sending, end_to_end = asyncio.run(run(bootstrap, args.events))
    print(f"events: {args.events}, key groups: {GROUPS}")
    print(f"sending side:  {sending:>10,.0f} ev/s")
    print(f"end to end:    {end_to_end:>10,.0f} ev/s (both sides in one process)")


if __name__ == "__main__":
    main()
