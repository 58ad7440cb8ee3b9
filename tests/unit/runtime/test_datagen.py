"""The datagen source: determinism, resume, bounded counts, the card-per-partition rule, rate."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from heliosdb_streaming.runtime.connectors.datagen import BASE_TIME_MS, BLOCK, STEP_MS, DatagenSourceReader
from heliosdb_streaming.runtime.contracts import Batch, Split


def make(**kw: Any) -> DatagenSourceReader:
    settings: dict[str, Any] = {
        "schema": "transactions",
        "rate_per_sec": 0,
        "count": None,
        "partitions": 1,
        "seed": 0,
        "keys": 100,
        "source_index": 0,
    }
    settings.update(kw)
    return DatagenSourceReader(**settings)


async def read_all(
    reader: DatagenSourceReader,
    splits: list[Split],
    positions: dict[str, Any],
    max_records: int,
    limit: int = 10**9,
) -> dict[str, Batch]:
    await reader.open(splits, positions)
    out: dict[str, Batch] = {s.split_id: [] for s in splits}
    finished: set[str] = set()
    total = 0
    while len(finished) < len(splits) and total < limit:
        for batch in await reader.poll(max_records, 0.01):
            assert batch.split_id not in finished, "a split reported after it finished"
            out[batch.split_id].extend(batch.records)
            total += len(batch.records)
            if batch.finished:
                finished.add(batch.split_id)
    await reader.close()
    return out


async def test_splits_one_per_partition() -> None:
    splits = await make(partitions=3, source_index=4).discover_splits()
    assert [(s.split_id, s.source_index, s.params) for s in splits] == [
        ("s4-p0", 4, {"partition": 0}),
        ("s4-p1", 4, {"partition": 1}),
        ("s4-p2", 4, {"partition": 2}),
    ]


async def test_schema_of_a_record() -> None:
    reader = make(partitions=2, keys=50, seed=3)
    records = reader.generate(1, 0, 5)
    assert list(records[0]) == [
        "transaction_id",
        "card_id",
        "merchant",
        "amount",
        "currency",
        "country",
        "timestamp",
    ]
    assert [r["transaction_id"] for r in records] == [f"tx-1-{i}" for i in range(5)]
    assert [r["timestamp"] for r in records] == [BASE_TIME_MS + i * STEP_MS for i in range(5)]
    for r in records:
        assert r["card_id"].startswith("card-") and len(r["card_id"]) == 10
        assert isinstance(r["amount"], float) and round(r["amount"], 2) == r["amount"]
        assert r["currency"] in ("USD", "EUR", "GBP")
        assert isinstance(r["merchant"], str) and isinstance(r["country"], str)


async def test_same_seed_same_output_whatever_the_batch_size() -> None:
    splits = await make(partitions=3).discover_splits()
    runs = [
        await read_all(make(partitions=3, count=3 * (BLOCK + 900) + 1, seed=42), splits, {}, max_records=size)
        for size in (7, 997, BLOCK, 50_000)
    ]
    for other in runs[1:]:
        assert other == runs[0]
    assert sum(len(v) for v in runs[0].values()) == 3 * (BLOCK + 900) + 1
    different_seed = await read_all(
        make(partitions=3, count=3 * (BLOCK + 900) + 1, seed=43), splits, {}, max_records=BLOCK
    )
    assert different_seed != runs[0]


async def test_resume_from_a_position_reproduces_the_rest() -> None:
    splits = await make(partitions=2).discover_splits()
    full = await read_all(make(partitions=2, count=20_000, seed=9), splits, {}, max_records=1000)
    positions = {"s0-p0": 1234, "s0-p1": BLOCK + 7}
    rest = await read_all(make(partitions=2, count=20_000, seed=9), splits, positions, max_records=333)
    for split_id, position in positions.items():
        assert rest[split_id] == full[split_id][position:]
    # A reader of one split only produces exactly that split's records.
    alone = await read_all(make(partitions=2, count=20_000, seed=9), [splits[1]], {}, max_records=5000)
    assert alone == {"s0-p1": full["s0-p1"]}


async def test_positions_are_next_sequence_numbers() -> None:
    reader = make(partitions=1, count=10)
    await reader.open(await reader.discover_splits(), {})
    first = await reader.poll(4, 0.01)
    assert [(b.position, b.finished, len(b.records)) for b in first] == [(4, False, 4)]
    assert first[0].ingest_ms > 1.6e12  # wall clock, for latency
    second = await reader.poll(100, 0.01)
    assert [(b.position, b.finished, len(b.records)) for b in second] == [(10, True, 6)]
    assert await reader.poll(100, 0.01) == []


async def test_bounded_count_is_split_evenly_first_partitions_get_the_rest() -> None:
    reader = make(partitions=4, count=10)
    assert [reader.split_count(p) for p in range(4)] == [3, 3, 2, 2]
    out = await read_all(reader, await reader.discover_splits(), {}, max_records=100)
    assert {k: len(v) for k, v in out.items()} == {"s0-p0": 3, "s0-p1": 3, "s0-p2": 2, "s0-p3": 2}
    assert len({r["transaction_id"] for v in out.values() for r in v}) == 10


async def test_empty_or_exhausted_splits_report_finished_once() -> None:
    reader = make(partitions=3, count=1)
    splits = await reader.discover_splits()
    await reader.open(splits, {"s0-p0": 1})
    batches = await reader.poll(100, 0.01)
    assert sorted((b.split_id, len(b.records), b.finished, b.position) for b in batches) == [
        ("s0-p0", 0, True, 1),
        ("s0-p1", 0, True, 0),
        ("s0-p2", 0, True, 0),
    ]
    assert await reader.poll(100, 0.01) == []
    with pytest.raises(ValueError, match="out of range"):
        await make(partitions=3, count=1).open(splits, {"s0-p0": 2})


async def test_each_card_lives_in_exactly_one_partition() -> None:
    partitions, keys = 4, 103
    reader = make(partitions=partitions, keys=keys, count=80_000, seed=5)
    out = await read_all(reader, await reader.discover_splits(), {}, max_records=BLOCK)
    owner: dict[str, int] = {}
    for split_id, records in out.items():
        partition = int(split_id.rsplit("p", 1)[1])
        for r in records:
            k = int(r["card_id"].split("-")[1])
            assert k % partitions == partition
            assert owner.setdefault(r["card_id"], partition) == partition
    assert len(owner) == keys  # every card shows up


async def test_amounts_are_mostly_small_with_a_heavy_tail() -> None:
    records = make(seed=1).generate(0, 0, 200_000)
    amounts = [r["amount"] for r in records]
    above_10k = sum(a > 10_000 for a in amounts) / len(amounts)
    assert 0.005 < above_10k < 0.02
    assert sorted(amounts)[len(amounts) // 2] < 100
    countries = Counter(r["country"] for r in records)
    assert 0.4 < countries["US"] / len(records) < 0.6
    assert len({r["merchant"] for r in records}) >= 10


async def test_unbounded_never_finishes() -> None:
    reader = make(partitions=2)
    await reader.open(await reader.discover_splits(), {})
    for _ in range(5):
        batches = await reader.poll(1000, 0.01)
        assert len(batches) == 2 and not any(b.finished for b in batches)
    await reader.close()


async def test_rate_limit_is_the_total_over_all_partitions() -> None:
    reader = make(partitions=4, rate_per_sec=2000)
    await reader.open(await reader.discover_splits(), {})
    started = time.monotonic()
    got = 0
    polls = 0
    while time.monotonic() - started < 1.0:
        polls += 1
        got += sum(len(b.records) for b in await reader.poll(10_000, 0.05))
    elapsed = time.monotonic() - started
    assert 0.6 * 2000 * elapsed <= got <= 1.3 * 2000 * elapsed + 50
    assert polls < 1000, "must sleep, not spin, while waiting for the rate"


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="keys >= partitions"):
        make(partitions=8, keys=4)
    with pytest.raises(ValueError, match="unknown datagen schema"):
        make(schema="orders")


@pytest.mark.timeout(120)
async def test_generation_speed_smoke() -> None:
    """Not a benchmark (see the report for numbers): catches an accidental slow path."""
    reader = make(partitions=1, keys=1000)
    reader.generate(0, 0, 1)
    started = time.process_time()
    n = sum(len(reader.generate(0, i, i + BLOCK)) for i in range(0, 50 * BLOCK, BLOCK))
    rate = n / (time.process_time() - started)
    assert rate > 100_000, f"{rate:,.0f} records/s"


async def test_lag_is_what_is_left_or_due_and_unknown_when_infinite() -> None:
    bounded = DatagenSourceReader(count=100, partitions=2)
    splits = await bounded.discover_splits()
    await bounded.open(splits, {"s0-p0": 10})
    assert bounded.lag() == 90  # no rate: everything left is available now
    unbounded = DatagenSourceReader(partitions=1)
    await unbounded.open(await unbounded.discover_splits(), {})
    assert unbounded.lag() is None  # no rate, no count: the newest offset is infinite
    rated = DatagenSourceReader(count=1_000_000, partitions=1, rate_per_sec=1000)
    rated_splits = await rated.discover_splits()
    opened = time.monotonic()
    await rated.open(rated_splits, {})
    await asyncio.sleep(0.2)
    lag = rated.lag()
    elapsed = time.monotonic() - opened
    assert lag is not None and 199 <= lag <= elapsed * 1000 + 1  # what the rate made due, nothing read
