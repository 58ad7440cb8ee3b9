"""A repartitioned job in real worker processes: ``python -m benchmarks.repartition_jobs [--events N]``.

Datagen (4 partitions, keyed by card) -> ``key_by merchant`` -> 1 h tumbling count and sum ->
discard, run by the embedded control plane at parallelism 1 (in process), 2 and 3 (records cross
worker processes through the job's internal topic on a tansu broker started here), checkpoints every
second (``--checkpoint-ms``). The rate is taken from the moment 10% of the events were read to the
job's end (the later stages have then processed everything), so start-up is not in it. All workers
share this machine's cores with the broker: the figure is per machine, not per worker. On a machine
shared with other work the rate varies by tens of percent from run to run, so each run also prints
the CPU time the workers and the broker spent per million events (from the kernel's accounting of
this process's children), which other load does not change much: compare that between versions.

``--source kafka`` reads a topic of 4 partitions keyed by card instead (prefilled here, declared
``partitioned_by: card_id``); the Kafka source does not end, so a run lasts until the key-group tasks
have taken in every event (their ``events_in``). ``--quix`` (or ``QUIX=1``; needs ``pip install -e
'.[bench]'``) then runs Quix Streams' ``group_by("merchant")`` -> the same tumbling count and sum on
the same topic, which also repartitions through a topic on the same broker, and prints each row's
events/s per worker against it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from benchmarks.quix import Seen, counted, quix_events_per_second, versus
from benchmarks.services import prefill_topic
from benchmarks.table import print_table
from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.testing.tansu import run_tansu


def datagen_source(events: int) -> dict[str, Any]:
    return {"type": "datagen", "config": {"partitions": 4, "seed": 1, "keys": 10_000, "count": events}}


def kafka_source(bootstrap: str, topic: str) -> dict[str, Any]:
    config = {"bootstrap_servers": [bootstrap], "topic": topic, "start_from": "earliest"}
    return {"type": "kafka", "config": {**config, "partitioned_by": "card_id"}}


def body(source: dict[str, Any], parallelism: int, bootstrap: str, checkpoint_ms: int) -> dict[str, Any]:
    return {
        "name": f"repartition-p{parallelism}",
        "config": {
            "parallelism": parallelism,
            "checkpoint_interval_ms": checkpoint_ms,
            "restart_strategy": "none",
            "repartition": {"bootstrap_servers": [bootstrap]},
        },
        "sources": [source],
        "transformations": [
            {"type": "key_by", "config": {"key": "merchant"}},
            {
                "type": "window",
                "config": {"size": "1h", "aggregates": {"n": "count(*)", "total": "sum(amount)"}},
            },
        ],
        "sinks": [{"type": "discard", "config": {}}],
    }


async def run(
    source: dict[str, Any], events: int, parallelism: int, bootstrap: str, home: Path, checkpoint_ms: int
) -> float:
    """Events/s from the moment 10% of the events were read until the job finished (datagen) or its
    key-group tasks took in all ``events`` (Kafka, which never ends: it is then cancelled)."""
    endless = source["type"] == "kafka"
    async with JobManager(4, home=home) as jm:
        job_id = await jm.submit_job(body(source, parallelism, bootstrap, checkpoint_ms))
        start: float | None = None
        while (status := await jm.get_job_status(job_id)) != JobStatus.FINISHED:
            if status == JobStatus.FAILED:
                raise RuntimeError((await jm.get_job_details(job_id)).message)
            metrics = await jm.get_job_metrics(job_id)
            if start is None and metrics.events_processed >= 0.1 * events:
                start = time.perf_counter()
            if endless and sum(t.events_in for t in metrics.stage_tasks) >= events:
                await jm.cancel_job(job_id)
                break
            await asyncio.sleep(0.05)
        end = time.perf_counter()
        return 0.9 * events / max(end - (start or end), 1e-9)


def quix_group_by(bootstrap: str, topic: str, events: int, state_dir: str) -> float:
    """Quix Streams: ``group_by("merchant")`` (through a repartition topic on the same broker) -> a
    1 h tumbling count and sum, events/s counted after the repartition."""
    from datetime import timedelta

    from quixstreams.dataframe.windows import Count, Sum

    def regrouped(sdf: Any, seen: Seen) -> Any:
        sdf = sdf.group_by("merchant").apply(counted(seen))
        return sdf.tumbling_window(timedelta(hours=1)).agg(n=Count(), total=Sum("amount")).final()

    return quix_events_per_second(bootstrap, topic, events, state_dir, regrouped)


def children_cpu_s() -> float:
    """CPU seconds of this process's children: the finished ones (reaped workers) and the running
    ones (the broker)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--parallelism", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--checkpoint-ms", type=int, default=1000)
    parser.add_argument("--source", choices=["datagen", "kafka"], default="datagen")
    parser.add_argument("--quix", action="store_true", default=bool(os.environ.get("QUIX")))
    args = parser.parse_args()
    rows: list[tuple[Any, ...]] = []
    with run_tansu() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        if args.source == "kafka" or args.quix:
            asyncio.run(prefill_topic(bootstrap, topic, args.events, 4))
        source = kafka_source(bootstrap, topic) if args.source == "kafka" else datagen_source(args.events)
        for p in args.parallelism:
            cpu_before = children_cpu_s()
            home = Path(tmp) / f"p{p}"
            rate = asyncio.run(run(source, args.events, p, bootstrap, home, args.checkpoint_ms))
            cpu = (children_cpu_s() - cpu_before) / args.events * 1_000_000
            where = "in process" if p == 1 else "through Kafka"
            label = f"{args.source} -> key_by merchant -> tumbling, P={p} ({where})"
            rows.append((label, rate, rate / p, cpu))
        quix = quix_group_by(bootstrap, topic, args.events, str(Path(tmp) / "quix")) if args.quix else None
    print_table(
        [
            ("pipeline", "<58"),
            ("events/s", ">10,.0f"),
            ("per worker", ">10,.0f"),
            ("CPU s/1M", ">9.1f"),
            ("vs Quix/worker", ">14"),
        ],
        [(*row, versus(row[2], quix)) for row in rows]
        + ([("Quix Streams group_by merchant -> tumbling (1 process)", quix, quix, "", "")] if quix else []),
    )


if __name__ == "__main__":
    main()
