"""A downstream task's inbox (runtime/exchange/inbox.py): every message once and in its origin's
order through resent batches, skipped fetches and other attempts' messages; the origin's watermark is
the least over the task's partitions; barriers align, and at alignment exactly what precedes each
origin's barrier was applied. The property test runs random logs through a reader that skips."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK
from heliosdb_streaming.runtime.exchange import wire
from heliosdb_streaming.runtime.exchange.base import Delivery
from heliosdb_streaming.runtime.exchange.inbox import Aligned, ExchangeGapError, Inbox


def d(
    origin: str,
    position: int,
    watermark: int = 0,
    attempt: int = 1,
    records: list[dict[str, object]] | None = None,
) -> bytes:
    return wire.encode_delivery(
        attempt, origin, position, watermark, records if records is not None else [{"n": position}]
    )


def b(origin: str, position: int, checkpoint: int, attempt: int = 1) -> bytes:
    return wire.encode_barrier(attempt, origin, position, checkpoint)


def feed(inbox: Inbox, partition: int, values: list[bytes], start: int = 0) -> None:
    for i, value in enumerate(values):
        inbox.offer(partition, start + i, value)


def test_duplicates_and_other_attempts_are_dropped() -> None:
    inbox = Inbox([0], ["a"], attempt=2)
    feed(
        inbox,
        0,
        [
            d("a", 1, attempt=1),
            d("a", 1, attempt=2),
            d("a", 2, attempt=2),
            d("a", 1, attempt=2),
            d("a", 2, attempt=2),
            d("a", 3, attempt=3),
            d("a", 3, attempt=2),
        ],
    )
    assert [x.position for x in inbox.take() if isinstance(x, Delivery)] == [1, 2, 3]
    assert (inbox.duplicates, inbox.other_attempts) == (2, 2)
    assert inbox.offsets() == {0: 7} and inbox.seeks() == {}


def test_a_gap_reads_the_partition_again_from_after_the_last_applied_message() -> None:
    inbox = Inbox([0, 1], ["a", "b"], attempt=1)
    feed(inbox, 0, [d("a", 1), d("b", 1), d("a", 2)])
    inbox.offer(0, 4, d("a", 4))  # offset 3 (a's position 3) skipped by the fetch
    inbox.offer(0, 5, d("b", 2))  # ignored: fetched before the seek
    assert inbox.seeks() == {0: 3}
    feed(inbox, 0, [d("a", 3), d("a", 4), d("b", 2)], start=3)
    got = [(x.origin, x.position) for x in inbox.take() if isinstance(x, Delivery)]
    assert got == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 2)]
    inbox.offer(1, 7, d("b", 2))  # a restored offset into a topic created anew: from the beginning
    assert inbox.seeks() == {1: 0}


def test_a_gap_that_never_fills_fails_the_task() -> None:
    inbox = Inbox([0], ["a"], attempt=1, start_offsets={0: 5}, max_gaps=3)
    with pytest.raises(ExchangeGapError, match="position 1 still missing"):
        for _ in range(4):
            inbox.offer(0, 5, d("a", 2))  # position 1 is nowhere from offset 5 on
            assert inbox.seeks() == {0: 0}
            inbox.offer(0, 0, d("a", 2))


def test_a_fetch_that_skips_offsets_is_read_again_and_a_hole_that_stays_fails_the_task() -> None:
    inbox = Inbox([0], ["a"], attempt=1, max_gaps=2)
    inbox.offer(0, 0, d("a", 1))
    inbox.offer(0, 2, d("a", 3))  # offset 1 skipped in the middle of a fetch
    assert inbox.seeks() == {0: 1}
    inbox.offer(0, 1, d("a", 2))
    inbox.offer(0, 2, d("a", 3))
    inbox.check_position(0, 5)  # offsets 3 and 4 skipped at the end of a fetch
    assert inbox.seeks() == {0: 3}
    assert [x.position for x in inbox.take() if isinstance(x, Delivery)] == [1, 2, 3]
    with pytest.raises(ExchangeGapError, match="offset 3 still not fetched"):
        for _ in range(3):
            inbox.check_position(0, 5)
            inbox.seeks()


def test_the_origin_watermark_is_the_least_over_the_task_partitions() -> None:
    inbox = Inbox([0, 1], ["a"], attempt=1)
    inbox.offer(0, 0, d("a", 1, watermark=500))
    inbox.offer(1, 0, d("a", 1, watermark=200))
    inbox.offer(0, 1, d("a", 2, watermark=900))
    inbox.offer(1, 1, d("a", 2, watermark=MAX_WATERMARK, records=[]))
    assert [x.watermark for x in inbox.take() if isinstance(x, Delivery)] == [MIN_WATERMARK, 200, 200, 900]
    assert not inbox.finished
    inbox.offer(0, 2, d("a", 3, watermark=MAX_WATERMARK, records=[]))
    assert inbox.take()[-1].watermark == MAX_WATERMARK  # type: ignore[union-attr]
    assert inbox.finished


def test_alignment_holds_back_what_follows_a_barrier_and_reads_it_again_after_the_snapshot() -> None:
    inbox = Inbox([0, 1], ["a", "b"], attempt=1)
    p0 = [d("a", 1), b("a", 2, 7), d("a", 3), d("b", 1), b("b", 2, 7), d("b", 3)]
    p1 = [b("a", 1, 7), d("b", 1), d("a", 2), b("b", 2, 7)]
    feed(inbox, 0, p0)
    feed(inbox, 1, p1)
    out = inbox.take()
    assert out[-1] == Aligned(7)
    applied = sorted((x.group, x.origin, x.position) for x in out if isinstance(x, Delivery))
    assert applied == [(0, "a", 1), (0, "b", 1), (1, "b", 1)]  # what precedes each barrier, no more
    assert inbox.seeks() == {}  # nothing moves before the snapshot
    offsets = inbox.offsets()
    inbox.release(7)
    assert inbox.seeks() == {0: 2, 1: 1}  # after a's barrier on 0 (offset 1) and on 1 (offset 0)
    feed(inbox, 0, p0[2:], start=2)
    feed(inbox, 1, p1[1:], start=1)
    after = sorted((x.group, x.origin, x.position) for x in inbox.take() if isinstance(x, Delivery))
    assert after == [(0, "a", 3), (0, "b", 3), (1, "a", 2)]
    assert offsets == {0: 6, 1: 4}
    with pytest.raises(ValueError, match="aligned at none"):
        inbox.release(7)


def test_a_finished_origin_does_not_hold_alignment_and_a_newer_barrier_abandons_an_older_one() -> None:
    inbox = Inbox([0], ["a", "b"], attempt=1)
    feed(inbox, 0, [b("a", 1, 1), d("a", 2), b("b", 1, 2)])  # b skipped checkpoint 1: 1 is abandoned
    assert not any(isinstance(x, Aligned) for x in inbox.take())
    assert inbox.seeks() == {0: 1}  # a's held delivery is read again
    feed(inbox, 0, [d("a", 2), d("a", 3, watermark=MAX_WATERMARK, records=[])], start=1)
    assert inbox.take()[-1] == Aligned(2)


# ----------------------------------------------------------------------------- property test


History = tuple[dict[int, list[bytes]], dict[tuple[int, str], list[tuple[int, int]]], int, int]


@st.composite
def histories(
    draw: st.DrawFn,
) -> tuple[dict[int, list[bytes]], dict[tuple[int, str], list[tuple[int, int]]], int, int]:
    """Random logs: 1-3 partitions, 1-3 origins, each channel's sequence of deliveries and barriers
    (the same checkpoints in every channel), interleaved per partition, with resent batches copied
    later into the log and messages of an old attempt mixed in."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    partitions = list(range(draw(st.integers(1, 3))))
    origins = [f"o{i}" for i in range(draw(st.integers(1, 3)))]
    checkpoints = draw(st.integers(0, 3))
    channels: dict[tuple[int, str], list[tuple[int, int]]] = {}
    logs: dict[int, list[bytes]] = {}
    for p in partitions:
        streams = []
        for o in origins:
            items: list[tuple[int, int]] = []  # (kind, payload): 0 delivery n, 1 barrier id
            n = 0
            for cp in range(1, checkpoints + 1):
                for _ in range(rnd.randint(0, 4)):
                    n += 1
                    items.append((0, n))
                items.append((1, cp))
            for _ in range(rnd.randint(0, 4)):
                n += 1
                items.append((0, n))
            channels[(p, o)] = items
            encoded = [
                d(o, i + 1, records=[{"o": o, "n": v}]) if k == 0 else b(o, i + 1, v)
                for i, (k, v) in enumerate(items)
            ]
            with_copies: list[bytes] = []
            for i, value in enumerate(encoded):
                with_copies.append(value)
                if rnd.random() < 0.2:  # a resent batch lands again right after (ack lost)
                    with_copies.extend(encoded[max(0, i - rnd.randint(0, 2)) : i + 1])
            streams.append(with_copies)
        log: list[bytes] = []
        while any(streams):
            s = rnd.choice([s for s in streams if s])
            log.append(s.pop(0))
            if rnd.random() < 0.1:
                log.append(d(rnd.choice(origins), rnd.randint(1, 5), attempt=0))
        logs[p] = log
    return logs, channels, checkpoints, rnd.randint(0, 2**32)


@settings(max_examples=300, deadline=None)
@given(histories())
def test_every_message_once_in_order_and_alignment_is_exact(history: History) -> None:
    logs, channels, checkpoints, seed = history
    rnd = random.Random(seed)
    origins = sorted({o for _p, o in channels})
    inbox = Inbox(sorted(logs), origins, attempt=1, max_gaps=50)
    cursor = dict.fromkeys(logs, 0)
    applied: dict[tuple[int, str], list[int]] = defaultdict(list)
    aligned: list[int] = []
    for _ in range(100_000):
        live = [p for p in logs if cursor[p] < len(logs[p])]
        if not live:
            break
        p = rnd.choice(live)
        if rnd.random() < 0.15:
            cursor[p] += 1  # the fetch skips a message: the reader's position moves past it
            inbox.check_position(p, cursor[p])
            for sp, offset in inbox.seeks().items():
                cursor[sp] = offset
            continue
        inbox.offer(p, cursor[p], logs[p][cursor[p]])
        cursor[p] += 1
        inbox.check_position(p, cursor[p])
        for x in inbox.take():
            if isinstance(x, Aligned):
                for (cp, o), items in channels.items():
                    before = [v for k, v in items[: items.index((1, x.checkpoint_id))] if k == 0]
                    assert applied[(cp, o)] == before, f"at checkpoint {x.checkpoint_id}"
                aligned.append(x.checkpoint_id)
                inbox.release(x.checkpoint_id)
            else:
                assert x.records, "only deliveries with records here"
                applied[(x.group, x.origin)].extend(r["n"] for r in x.records)
        for sp, offset in inbox.seeks().items():
            cursor[sp] = offset
    assert aligned == list(range(1, checkpoints + 1))
    for key, items in channels.items():
        assert applied[key] == [v for k, v in items if k == 0]


def test_a_task_mark_counts_once_what_it_requires_on_other_partitions_was_applied() -> None:
    """The origin wrote a record of time 100 to partition 1 (its position 1 there), then its task
    mark 150 to partition 0 requiring partition 1's position 1. Read partition 0 first (partitions
    are read independently): the mark must not count before that record, or the record is late."""
    inbox = Inbox([0, 1, 2], ["a"], attempt=1)
    feed(inbox, 0, [wire.encode_task_mark(1, "a", 1, 150, [[1, 1]])])
    assert inbox.watermark_of("a") == MIN_WATERMARK
    out = inbox.take()
    assert [(x.records, x.watermark) for x in out if isinstance(x, Delivery)] == [([], MIN_WATERMARK)]
    feed(inbox, 1, [d("a", 1, watermark=90, records=[{"ts": 100}])])
    # partition 2 never had anything of the origin: it holds nothing back
    assert inbox.watermark_of("a") == 150
    assert [x.watermark for x in inbox.take() if isinstance(x, Delivery)] == [150]
    # a later mark needing more than an earlier one: they count in order, never back
    feed(inbox, 0, [wire.encode_task_mark(1, "a", 2, 200, [[1, 2], [2, 1]])], start=1)
    feed(inbox, 2, [d("a", 1, watermark=180)])
    assert inbox.watermark_of("a") == 150
    feed(inbox, 1, [d("a", 2, watermark=190)], start=1)
    assert inbox.watermark_of("a") == 200


def test_a_task_mark_already_satisfied_counts_at_once_and_finishing_still_needs_every_partition() -> None:
    inbox = Inbox([0, 1], ["a"], attempt=1)
    feed(inbox, 1, [d("a", 1, watermark=50)])
    feed(inbox, 0, [wire.encode_task_mark(1, "a", 1, 70, [[1, 1]])])
    assert inbox.watermark_of("a") == 70 and not inbox.finished
    feed(inbox, 0, [d("a", 2, watermark=MAX_WATERMARK, records=[])], start=1)
    assert not inbox.finished  # partition 1 has not had the end of input yet
    feed(inbox, 1, [d("a", 2, watermark=MAX_WATERMARK, records=[])], start=1)
    assert inbox.finished and inbox.watermark_of("a") == MAX_WATERMARK
