"""Results computed straight from generated input, without the engine, for tests to compare with."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from heliosdb_streaming.runtime.connectors.datagen import DatagenSourceReader


def tumbling_window_per_card(size: str = "1s") -> dict[str, Any]:
    """The transformation ``datagen_tumbling_windows`` computes the result of: count(*) as n and
    sum(amount) as total per card_id and tumbling window."""
    return {
        "type": "window",
        "config": {
            "kind": "tumbling",
            "size": size,
            "key": "card_id",
            "aggregates": {"n": "count(*)", "total": "sum(amount)"},
        },
    }


async def datagen_tumbling_windows(
    *, count: int, partitions: int, seed: int, keys: int, size_ms: int = 1000
) -> list[tuple[Any, ...]]:
    """(card_id, window_start, window_end, n, total rounded to 6 places) of count(*) and sum(amount)
    per card and tumbling event-time window over the datagen transactions, sorted."""
    reader = DatagenSourceReader(
        schema="transactions",
        rate_per_sec=0,
        count=count,
        partitions=partitions,
        seed=seed,
        keys=keys,
        source_index=0,
    )
    splits = await reader.discover_splits()
    await reader.open(splits, {})
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0])
    finished: set[str] = set()
    while len(finished) < len(splits):
        for batch in await reader.poll(10_000, 0.1):
            for r in batch.records:
                acc = sums[(r["card_id"], r["timestamp"] - r["timestamp"] % size_ms)]
                acc[0] += 1
                acc[1] += r["amount"]
            if batch.finished:
                finished.add(batch.split_id)
    await reader.close()
    return sorted((c, s, s + size_ms, int(n), round(t, 6)) for (c, s), (n, t) in sums.items())
