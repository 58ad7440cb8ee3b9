"""The ``discard`` sink: counts and drops everything (Flink's blackhole), for benchmarks and dry runs."""

from __future__ import annotations

from heliosdb_streaming.runtime.contracts import Batch


class DiscardSinkWriter:
    def __init__(self) -> None:
        self.records = 0

    async def open(self) -> None:
        return None

    async def write(self, task_id: str, records: Batch) -> None:
        self.records += len(records)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None
