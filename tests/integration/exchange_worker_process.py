"""A worker process for the cross-process exchange tests: one origin (upstream task) that keys its
share of a deterministic event stream, and one downstream task that counts and sums per key over the
key groups it owns, both through a :class:`KafkaExchange` on a real broker.

    python exchange_worker_process.py CONFIG.json

Config: ``bootstrap``, ``job_id``, ``index``, ``parallelism``, ``max_parallelism``, ``events`` (total
over all workers), ``attempt``, ``dir`` (where ``snapshot-<index>.json`` and ``result-<index>.json``
go), ``mode``: ``checkpoint_then_hang`` (send half, barrier 1, snapshot when aligned, send the rest
without finishing, then wait to be killed) or ``run`` (from the snapshot if there is one, send what
remains, finish, and write the result once every origin finished).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK
from heliosdb_streaming.runtime.exchange.kafka_exchange import KafkaExchange, TaskInput
from heliosdb_streaming.runtime.exchange.keygroups import key_group, owned_groups

BOUNDARY = 1


def events_of(index: int, parallelism: int, total: int) -> list[dict[str, Any]]:
    return [{"key": f"k{(n * 7919) % 53}", "v": n, "ts": n} for n in range(total) if n % parallelism == index]


def by_group(records: list[dict[str, Any]], max_parallelism: int) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(key_group(r["key"], max_parallelism), []).append(r)
    return out


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.c = config
        self.dir = Path(config["dir"])
        self.index = int(config["index"])
        self.parallelism = int(config["parallelism"])
        self.k = int(config["max_parallelism"])
        self.origin = f"w{self.index}"
        self.origins = [f"w{i}" for i in range(self.parallelism)]
        self.groups = owned_groups(self.index, self.parallelism, self.k)
        self.events = events_of(self.index, self.parallelism, int(config["events"]))
        self.state: dict[str, list[int]] = {}
        self.marks: dict[str, int] = {}
        self.applied = 0
        self.late = 0  # records at or below the task's watermark (min over origins) when they came

    def snapshot_path(self) -> Path:
        return self.dir / f"snapshot-{self.index}.json"

    async def main(self) -> None:
        saved = orjson.loads(self.snapshot_path().read_bytes()) if self.snapshot_path().exists() else None
        exchange = KafkaExchange(
            bootstrap_servers=[self.c["bootstrap"]],
            job_id=self.c["job_id"],
            max_parallelism=self.k,
            attempt=int(self.c["attempt"]),
            watermark_interval_s=0.05,
        )
        task_input = TaskInput(BOUNDARY, self.groups, self.origins)
        sent = 0
        if saved is not None:
            self.state = saved["state"]
            sent = saved["source_position"]
            offsets = {int(p): int(o) for p, o in saved["exchange"]["offsets"].items()}
            task_input = TaskInput(BOUNDARY, self.groups, self.origins, offsets, saved["exchange"]["attempt"])
        await exchange.open({BOUNDARY: self.k}, [task_input])
        try:
            if self.c["mode"] == "checkpoint_then_hang":
                await self.checkpoint_then_hang(exchange)
            else:
                await self.run(exchange, sent)
        finally:
            await exchange.close()

    async def send(self, exchange: KafkaExchange, records: list[dict[str, Any]], watermark: int) -> None:
        exchange.send(BOUNDARY, self.origin, by_group(records, self.k), watermark)
        await exchange.wait_for_room()

    def apply(self, exchange: KafkaExchange) -> None:
        for delivery in exchange.receive(BOUNDARY, self.groups):
            assert delivery.group in self.groups
            watermark = min(self.marks.get(o, MIN_WATERMARK) for o in self.origins)
            for r in delivery.records:
                if r["ts"] <= watermark:
                    self.late += 1
                entry = self.state.setdefault(r["key"], [0, 0])
                entry[0] += 1
                entry[1] += r["v"]
                self.applied += 1
            self.marks[delivery.origin] = max(
                delivery.watermark, self.marks.get(delivery.origin, MIN_WATERMARK)
            )

    async def checkpoint_then_hang(self, exchange: KafkaExchange) -> None:
        half = len(self.events) // 2
        for start in range(0, half, 100):
            batch = self.events[start : min(start + 100, half)]
            await self.send(exchange, batch, batch[-1]["ts"] - 1)
            self.apply(exchange)
        exchange.send_barrier(BOUNDARY, self.origin, 1)
        await exchange.flush()
        deadline = time.monotonic() + 60
        while exchange.aligned(BOUNDARY, self.groups) is None:
            assert time.monotonic() < deadline, "not aligned within 60 s"
            self.apply(exchange)
            await exchange.wait(BOUNDARY, self.groups, 0.2)
        self.apply(exchange)  # what precedes the barriers
        snapshot = {
            "state": self.state,
            "source_position": half,
            "exchange": exchange.snapshot(BOUNDARY, self.groups),
        }
        tmp = self.snapshot_path().with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(snapshot))
        tmp.rename(self.snapshot_path())
        exchange.release(BOUNDARY, self.groups, 1)
        print("checkpointed", flush=True)
        for start in range(half, len(self.events), 100):  # after the checkpoint: lost with the crash
            batch = self.events[start : start + 100]
            await self.send(exchange, batch, batch[-1]["ts"] - 1)
            self.apply(exchange)
        await exchange.flush()
        print("sent", flush=True)
        while True:
            self.apply(exchange)
            await exchange.wait(BOUNDARY, self.groups, 0.2)

    async def run(self, exchange: KafkaExchange, sent: int) -> None:
        for start in range(sent, len(self.events), 100):
            batch = self.events[start : start + 100]
            await self.send(exchange, batch, batch[-1]["ts"] - 1)
            self.apply(exchange)
        exchange.send(BOUNDARY, self.origin, {}, MAX_WATERMARK)
        await exchange.flush()
        deadline = time.monotonic() + 90
        while not exchange.finished(BOUNDARY, self.groups):
            assert time.monotonic() < deadline, f"origins not finished within 90 s: {self.marks}"
            self.apply(exchange)
            await exchange.wait(BOUNDARY, self.groups, 0.2)
        self.apply(exchange)
        assert all(self.marks.get(o) == MAX_WATERMARK for o in self.origins), self.marks
        result = {"state": self.state, "late": self.late}
        (self.dir / f"result-{self.index}.json").write_bytes(orjson.dumps(result))
        print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(Worker(orjson.loads(Path(sys.argv[1]).read_bytes())).main())
