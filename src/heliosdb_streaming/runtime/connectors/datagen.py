"""The ``datagen`` source: deterministic synthetic card transactions, fast enough to benchmark the engine.

Determinism: record ``i`` of partition ``p`` is a pure function of ``(seed, p, i)``. Records are
generated in blocks of ``BLOCK`` records whose random bytes come from SHAKE-128 of
``(seed, p, block)``, so the output does not depend on batch sizes, on how splits are spread over
workers, or on restarts: resuming from position ``n`` (the sequence number of the next record)
reproduces exactly the records that follow. Timestamps are not wall-clock: record ``i`` of every
partition has ``timestamp = BASE_TIME_MS + i * STEP_MS`` (2026-01-01T00:00:00Z plus 10 ms per
record), so they increase within a split and runs are reproducible.

Schema ``transactions``: ``transaction_id`` (``tx-<partition>-<i>``, unique within the source),
``card_id`` (``card-00042``; card ``k`` only ever appears in partition ``k % partitions``, so keyed
state stays inside one split), ``merchant``, ``amount`` (2 decimals; mostly small, ~1% above 10000),
``currency`` (USD/EUR/GBP), ``country`` (ISO code, about half ``US``), ``timestamp`` (epoch ms).

``count`` is the total over all partitions (the first ``count % partitions`` partitions get one
extra record); without it the source is unbounded. ``rate_per_sec`` is the total rate of the whole
source, so each split produces ``rate_per_sec / partitions`` records per second; 0 means as fast as
possible.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any

from heliosdb_streaming.runtime.contracts import Batch, Split, SplitBatch

BLOCK = 4096
BASE_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STEP_MS = 10
# A split may catch up on at most this much lost time (e.g. after a slow downstream) in one burst.
MAX_BURST_S = 1.0

MERCHANTS = (
    "amazon",
    "walmart",
    "target",
    "starbucks",
    "shell",
    "uber",
    "netflix",
    "apple",
    "ikea",
    "airbnb",
    "booking",
    "steam",
)
# (country, currency, weight out of 256)
GEOGRAPHY = (
    ("US", "USD", 128),
    ("CA", "USD", 16),
    ("MX", "USD", 10),
    ("GB", "GBP", 30),
    ("DE", "EUR", 22),
    ("FR", "EUR", 18),
    ("ES", "EUR", 10),
    ("NL", "EUR", 8),
    ("BR", "USD", 6),
    ("NG", "USD", 4),
    ("JP", "USD", 4),
)
AMOUNT_TABLE_SIZE = 1 << 16


@functools.lru_cache(maxsize=8)
def _amount_table(seed: int) -> list[float]:
    """65,536 amounts drawn once per seed; a record picks one with 16 random bits.

    98% log-normal (median ~45, capped below 10000), 1% uniform 1000-10000, 1% uniform 10000-50000.
    """
    rng = random.Random(f"helios-datagen-amounts/{seed}")
    table = []
    for _ in range(AMOUNT_TABLE_SIZE):
        u = rng.random()
        if u < 0.01:
            value = rng.uniform(10_000.0, 50_000.0)
        elif u < 0.02:
            value = rng.uniform(1_000.0, 10_000.0)
        else:
            value = min(max(rng.lognormvariate(3.8, 1.4), 0.5), 9_999.99)
        table.append(round(value, 2))
    return table


def _byte_table(choices: Sequence[tuple[str, int]]) -> list[str]:
    table: list[str] = []
    for value, weight in choices:
        table.extend([value] * weight)
    if len(table) != 256:
        raise AssertionError("weights must add up to 256")
    return table


_MERCHANT_BY_BYTE = [MERCHANTS[(b * len(MERCHANTS)) >> 8] for b in range(256)]
_COUNTRY_BY_BYTE = _byte_table([(c, w) for c, _, w in GEOGRAPHY])
_CURRENCY_BY_BYTE = _byte_table([(cur, w) for _, cur, w in GEOGRAPHY])
_BIG_ENDIAN = sys.byteorder == "big"
_U32 = next(code for code in "ILH" if array(code).itemsize == 4)


class _SplitState:
    __slots__ = (
        "anchor_pos",
        "anchor_t",
        "cards",
        "end",
        "partition",
        "position",
        "reported_finished",
        "split_id",
    )

    def __init__(
        self, split_id: str, partition: int, position: int, end: int | None, cards: list[str]
    ) -> None:
        self.split_id = split_id
        self.partition = partition
        self.position = position
        self.end = end
        self.cards = cards
        self.reported_finished = False
        self.anchor_t = 0.0
        self.anchor_pos = position


class DatagenSourceReader:
    """Reads the ``datagen`` source; see the module docstring for the data and its guarantees."""

    def __init__(
        self,
        *,
        schema: str = "transactions",
        rate_per_sec: float = 0,
        count: int | None = None,
        partitions: int = 1,
        seed: int = 0,
        keys: int = 1000,
        source_index: int = 0,
    ) -> None:
        if schema != "transactions":
            raise ValueError(f"unknown datagen schema {schema!r} (available: 'transactions')")
        if partitions < 1:
            raise ValueError("datagen needs at least one partition")
        if keys < partitions:
            raise ValueError(
                f"datagen needs keys >= partitions (got keys={keys}, partitions={partitions}): "
                "card k lives in partition k % partitions, so every partition needs at least one card"
            )
        if count is not None and count < 0:
            raise ValueError("count must not be negative")
        if rate_per_sec < 0:
            raise ValueError("rate_per_sec must not be negative")
        self.schema = schema
        self.rate_per_sec = float(rate_per_sec)
        self.count = count
        self.partitions = partitions
        self.seed = seed
        self.keys = keys
        self.source_index = source_index
        self.decode_errors: list[tuple[str, int, str]] = []
        self._splits: list[_SplitState] = []
        self._amounts: list[float] = []
        self._block_cache: dict[tuple[int, int], tuple[array[int], array[int], bytes, bytes]] = {}

    # ------------------------------------------------------------------------------------ splits

    def split_count(self, partition: int) -> int | None:
        """Number of records of one partition (None when unbounded)."""
        if self.count is None:
            return None
        base, extra = divmod(self.count, self.partitions)
        return base + (1 if partition < extra else 0)

    def cards_of(self, partition: int) -> list[str]:
        return [f"card-{k:05d}" for k in range(partition, self.keys, self.partitions)]

    async def discover_splits(self) -> list[Split]:
        return [
            Split(f"s{self.source_index}-p{p}", self.source_index, {"partition": p})
            for p in range(self.partitions)
        ]

    async def open(self, assigned: Sequence[Split], positions: dict[str, Any]) -> None:
        if not self._amounts:
            self._amounts = _amount_table(self.seed)
        now = time.monotonic()
        self._splits = []
        for split in assigned:
            partition = int(split.params["partition"])
            if not 0 <= partition < self.partitions:
                raise ValueError(f"split {split.split_id} names partition {partition} of {self.partitions}")
            position = int(positions.get(split.split_id, 0))
            end = self.split_count(partition)
            if position < 0 or (end is not None and position > end):
                raise ValueError(f"position {position} out of range for split {split.split_id} (0..{end})")
            state = _SplitState(split.split_id, partition, position, end, self.cards_of(partition))
            state.anchor_t = now
            self._splits.append(state)

    # -------------------------------------------------------------------------------------- poll

    async def poll(self, max_records: int, timeout_s: float) -> list[SplitBatch]:
        active = [s for s in self._splits if not s.reported_finished]
        if not active:
            await asyncio.sleep(timeout_s)
            return []
        share = max(1, max_records // len(active))
        per_split_rate = self.rate_per_sec / self.partitions if self.rate_per_sec > 0 else 0.0
        now = time.monotonic()
        budgets = [self._budget(s, share, per_split_rate, now) for s in active]
        if per_split_rate > 0 and not any(budgets) and not any(s.end == s.position for s in active):
            # Nothing due yet: sleep until the first split may emit again (at most timeout_s).
            wait = min(
                (s.anchor_t + (s.position - s.anchor_pos + 1) / per_split_rate - now for s in active),
                default=timeout_s,
            )
            await asyncio.sleep(max(0.0, min(wait, timeout_s)))
            now = time.monotonic()
            budgets = [self._budget(s, share, per_split_rate, now) for s in active]
        # records ready: returned without yielding, so a poll loop ahead of its consumer fills the
        # bounded queue and waits there, where the data path measures backpressure (a yield here
        # would let the consumer run inside poll instead, and a saturated job would show none)
        ingest_ms = time.time() * 1000.0
        out: list[SplitBatch] = []
        for state, n in zip(active, budgets, strict=True):
            finished_now = state.end is not None and state.position + n >= state.end
            if n == 0 and not finished_now:
                continue
            records = self.generate(state.partition, state.position, state.position + n, state.cards)
            state.position += n
            if finished_now:
                state.reported_finished = True
            out.append(SplitBatch(state.split_id, records, state.position, ingest_ms, finished_now))
        return out

    def _budget(self, state: _SplitState, share: int, rate: float, now: float) -> int:
        n = share
        if state.end is not None:
            n = min(n, state.end - state.position)
        if rate > 0:
            due = state.anchor_pos + int((now - state.anchor_t) * rate)
            lag_limit = max(1, int(rate * MAX_BURST_S))
            if due - state.position > lag_limit:  # fell behind: do not burst, re-anchor
                state.anchor_t = now - lag_limit / rate
                state.anchor_pos = state.position
                due = state.position + lag_limit
            n = min(n, max(0, due - state.position))
        return n

    def lag(self) -> int | None:
        """Records due and not yet read: the rest of a bounded count without a rate, what the rate has
        made due (at most the count) with one; None for an unbounded source without a rate (its
        newest offset is infinite). Read from the heartbeat thread: plain reads of ints."""
        total = 0
        now = time.monotonic()
        per_split_rate = self.rate_per_sec / self.partitions if self.rate_per_sec > 0 else 0.0
        for s in list(self._splits):
            if per_split_rate > 0:
                newest = s.anchor_pos + int((now - s.anchor_t) * per_split_rate)
                if s.end is not None:
                    newest = min(newest, s.end)
            elif s.end is not None:
                newest = s.end
            else:
                return None
            total += max(newest - s.position, 0)
        return total

    async def commit(self, positions: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        self._block_cache.clear()
        self._splits = []

    # -------------------------------------------------------------------------------- generation

    def generate(self, partition: int, start: int, stop: int, cards: list[str] | None = None) -> Batch:
        """Records ``start`` (inclusive) to ``stop`` (exclusive) of one partition."""
        if stop <= start:
            return []
        if not self._amounts:
            self._amounts = _amount_table(self.seed)
        if cards is None:
            cards = self.cards_of(partition)
        n_cards = len(cards)
        amounts = self._amounts
        merchants = _MERCHANT_BY_BYTE
        currencies = _CURRENCY_BY_BYTE
        countries = _COUNTRY_BY_BYTE
        out: Batch = []
        prefix = f"tx-{partition}-"
        i = start
        while i < stop:
            block, offset = divmod(i, BLOCK)
            upto = min(stop, (block + 1) * BLOCK)
            card_bits, amount_bits, merchant_bytes, geo_bytes = self._block(partition, block)
            lo, hi = offset, offset + (upto - i)
            ids = [prefix + str(seq) for seq in range(i, upto)]
            times = range(BASE_TIME_MS + i * STEP_MS, BASE_TIME_MS + upto * STEP_MS, STEP_MS)
            out.extend(
                [
                    {
                        "transaction_id": t,
                        "card_id": cards[c % n_cards],
                        "merchant": merchants[m],
                        "amount": amounts[a],
                        "currency": currencies[g],
                        "country": countries[g],
                        "timestamp": ts,
                    }
                    for t, ts, c, a, m, g in zip(
                        ids,
                        times,
                        card_bits[lo:hi],
                        amount_bits[lo:hi],
                        merchant_bytes[lo:hi],
                        geo_bytes[lo:hi],
                        strict=True,
                    )
                ]
            )
            i = upto
        return out

    def _block(self, partition: int, block: int) -> tuple[array[int], array[int], bytes, bytes]:
        """The random bits of one block: a pure function of (seed, partition, block)."""
        key = (partition, block)
        cached = self._block_cache.get(key)
        if cached is not None:
            return cached
        raw = hashlib.shake_128(f"helios-datagen/{self.seed}/{partition}/{block}".encode()).digest(BLOCK * 8)
        card_bits = array(_U32)
        card_bits.frombytes(raw[: BLOCK * 4])
        amount_bits = array("H")
        amount_bits.frombytes(raw[BLOCK * 4 : BLOCK * 6])
        if _BIG_ENDIAN:
            card_bits.byteswap()
            amount_bits.byteswap()
        fields = (card_bits, amount_bits, raw[BLOCK * 6 : BLOCK * 7], raw[BLOCK * 7 : BLOCK * 8])
        # One block per split is enough: reads are sequential.
        for stale in [k for k in self._block_cache if k[0] == partition]:
            del self._block_cache[stale]
        self._block_cache[key] = fields
        return fields
