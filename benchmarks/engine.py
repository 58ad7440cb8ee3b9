"""Engine throughput and latency per worker: ``python -m benchmarks.engine [--events N] [--quix]``.

Each pipeline runs the real worker code in this process (one worker, one partition) until N input
events are processed, and prints events/s and p99 ingestion-to-sink latency; the (f) rows pace
datagen at a set rate to show the latency a moderate load sees. Kafka pipelines read a
topic prefilled on a tansu broker started here; ``--quix`` runs (c) and (d) in Quix Streams on the
same topic and prints our/their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.services import prefill_topic
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.runtime.worker import Worker
from heliosdb_streaming.testing.tansu import run_tansu

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


async def run_worker(config: JobConfig, events: int, job_dir: Path) -> tuple[float, float, int]:
    """Runs one in-process worker until ``events`` are read; returns (events/s, p99 ms, events)."""
    worker = Worker(config, job_id=f"bench-{uuid.uuid4()}", index=0, attempt=1, job_dir=job_dir, channel=None)

    async def stop_when_done() -> None:
        while worker.counters.events_in < events:
            await asyncio.sleep(0.01)
        worker.stopping.set()

    watcher = asyncio.create_task(stop_when_done())
    started = time.perf_counter()
    code = await worker.run()
    elapsed = time.perf_counter() - started
    watcher.cancel()
    if code != 0:
        raise RuntimeError(f"{config.name} failed with exit code {code}")
    n = worker.counters.events_in
    return n / elapsed, worker.counters.latency.quantile(0.99), n


def quix_run(bootstrap: str, topic: str, events: int, windowed: bool, state_dir: str) -> float:
    """Quix Streams on the same topic: filter (c) or tumbling sum per key (d); returns events/s."""
    from datetime import timedelta

    from quixstreams import Application

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        use_changelog_topics=False,
        state_dir=state_dir,
    )
    seen = 0
    started = 0.0

    def count(value: Any) -> Any:
        nonlocal seen, started
        if seen == 0:
            started = time.perf_counter()
        seen += 1
        if seen >= events:
            app.stop()
        return value

    source = app.topic(topic, value_deserializer="json")
    # tansu does not report retention.ms, which Quix reads to size its state topics
    source.broker_config.extra_config.setdefault("retention.ms", str(7 * 86_400_000))
    sdf = app.dataframe(source)
    sdf = sdf.apply(count)
    if windowed:
        # messages are keyed by card_id already, which is what Quix keys its state by
        sdf = sdf.apply(lambda v: v["amount"])
        sdf = sdf.tumbling_window(timedelta(minutes=1)).sum().final()  # type: ignore[attr-defined]
    else:
        sdf = sdf.filter(lambda v: v["amount"] > 100)
    app.run()
    return seen / (time.perf_counter() - started)


async def run_ours(
    n: int, bootstrap: str, topic: str, tmp_path: Path
) -> list[tuple[str, str, float, float, int]]:
    rows: list[tuple[str, str, float, float, int]] = []
    generator: dict[str, Any] = {"partitions": 1, "seed": 1, "keys": 10_000}
    datagen = {"type": "datagen", "config": {**generator, "count": n}}
    for label, steps, backend in [
        ("(a) datagen -> filter -> discard", [FILTER], "memory"),
        ("(b) datagen -> filter -> CEP -> discard", [FILTER, CEP], "memory"),
    ]:
        eps, p99, count = await run_worker(
            job(label, datagen, steps, DISCARD, backend), n, tmp_path / label[:3]
        )
        rows.append((label, backend, eps, p99, count))
    for rate in LATENCY_RATES:  # latency at a set rate: ~4 s of events each
        count = rate * 4
        paced = {"type": "datagen", "config": {**generator, "count": count, "rate_per_sec": rate}}
        label = f"(f) datagen {rate:,} ev/s -> filter -> map -> discard"
        eps, p99, count = await run_worker(
            job(label, paced, [FILTER, MAP], DISCARD, "memory"), count, tmp_path / f"f{rate}"
        )
        rows.append((label, "memory", eps, p99, count))
    kafka = {
        "type": "kafka",
        "config": {"bootstrap_servers": [bootstrap], "topic": topic, "start_from": "earliest"},
    }
    dsn = os.environ.get("HELIOS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    pg_sink = {
        "type": "database",
        "config": {"connection_string": dsn, "table": f"bench_{uuid.uuid4().hex[:8]}", "batch_size": 5000},
    }
    pipelines: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]] = [
        ("(c) kafka -> filter -> discard", [FILTER], DISCARD, "memory"),
        ("(d) kafka -> tumbling sum/key -> discard", [WINDOW], DISCARD, "memory"),
        ("(d) kafka -> tumbling sum/key -> discard", [WINDOW], DISCARD, "rocksdb"),
        ("(e) kafka -> filter -> PostgreSQL", [FILTER], pg_sink, "memory"),
    ]
    for label, steps, sink, backend in pipelines:
        config = job(label, kafka, steps, sink, backend)
        eps, p99, count = await run_worker(config, n, tmp_path / f"{label[:3]}-{backend}")
        rows.append((label, backend, eps, p99, count))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quix", action="store_true", default=bool(os.environ.get("QUIX")))
    args = parser.parse_args()
    n = args.events
    quix: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, run_tansu() as bootstrap:
        tmp_path = Path(tmp)
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        asyncio.run(prefill_topic(bootstrap, topic, n))
        rows = asyncio.run(run_ours(n, bootstrap, topic, tmp_path))
        if args.quix:  # Quix installs signal handlers, so it runs in the main thread, after our loop
            quix["(c)"] = quix_run(bootstrap, topic, n, False, str(tmp_path / "q1"))
            quix["(d)"] = quix_run(bootstrap, topic, n, True, str(tmp_path / "q2"))
    print()
    print(f"{'pipeline':<52} {'state':<8} {'events/s':>12} {'p99 ms':>9} {'events':>10} {'vs Quix':>9}")
    print("-" * 105)
    for label, backend, eps, p99, count in rows:
        ratio = quix.get(label[:3])
        versus = f"{eps / ratio:8.2f}x" if ratio else ""
        print(f"{label:<52} {backend:<8} {eps:>12,.0f} {p99:>9.1f} {count:>10,} {versus:>9}")
    for key, eps in quix.items():
        print(f"{'Quix Streams ' + key:<52} {'memory':<8} {eps:>12,.0f}")
    print(f"\n{os.cpu_count()} cores, Python {sys.version.split()[0]}, {n:,} events per pipeline, one worker")


if __name__ == "__main__":
    main()
