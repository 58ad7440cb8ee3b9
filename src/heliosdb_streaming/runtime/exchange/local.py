"""The in-process exchange: one worker owns every task of every stage, so records are handed over in
memory, within the batch that produced them (the worker drains it before it takes the next batch,
so a checkpoint between two batches finds nothing in flight and no position to keep)."""

from __future__ import annotations

from collections.abc import Mapping

from heliosdb_streaming.runtime.contracts import Batch
from heliosdb_streaming.runtime.exchange.base import Delivery


class LocalExchange:
    """An :class:`~heliosdb_streaming.runtime.exchange.base.Exchange` over in-memory inboxes."""

    def __init__(self) -> None:
        self._inbox: dict[int, list[Delivery]] = {}
        self._positions: dict[tuple[int, str], int] = {}

    def send(
        self,
        boundary: int,
        origin: str,
        groups: Mapping[int, Batch],
        watermark: int,
        ingest_ms: float | None = None,
    ) -> None:
        inbox = self._inbox.setdefault(boundary, [])
        position = self._positions.get((boundary, origin), 0) + 1
        self._positions[(boundary, origin)] = position
        if not groups:
            inbox.append(Delivery(origin, -1, [], watermark, position))
            return
        for group, records in groups.items():
            inbox.append(Delivery(origin, group, records, watermark, position, ingest_ms))

    def receive(self, boundary: int, groups: range) -> list[Delivery]:
        """Deliveries for ``groups`` (marks, group -1, go to every receiver; in process there is one
        task per stage, so nothing else is ever left behind)."""
        inbox = self._inbox.get(boundary)
        if not inbox:
            return []
        mine = [d for d in inbox if d.group == -1 or d.group in groups]
        rest = [d for d in inbox if d.group != -1 and d.group not in groups]
        self._inbox[boundary] = rest
        return mine

    async def flush(self) -> None:
        """Nothing to do: what was sent is already in the receiver's inbox."""
