"""What a downstream task makes of its internal-topic partitions: each delivery once, in its origin's
order; the origin's watermark as this task sees it; checkpoint barriers aligned. Pure logic: the
caller feeds fetched messages and carries out the seeks it asks for.

Why this is exactly once without broker transactions
----------------------------------------------------
A *channel* is (partition, origin). Within one attempt (the job's run number, which grows on every
restart from a checkpoint), an origin numbers its messages on each channel 1, 2, 3... and the
producer (``kafka_transport.OrderedProducer``) writes them in that order: one batch in flight per
partition, a failed batch resent before anything later. So in the partition's log, the first copy
of position ``n`` always comes before the first copy of ``n + 1``; the only disorder is a second
copy of a resent batch. The inbox keeps, per channel, the highest position applied and applies a
message only when it is exactly the next one:

1. ``position <= applied``: a copy already applied (a resent batch): dropped.
2. ``position == applied + 1``: applied (unless the channel waits at a barrier, below).
3. ``position > applied + 1``: a message was not seen although it is in the log before this one
   (a restored offset can point into a topic that was created anew). The partition is read again
   from just after the channel's last applied message (or its beginning) and the gap is filled;
   dropping by rule 1 makes re-reading harmless. Repeated gaps without progress fail the task
   rather than loop.

A fetch that skips messages (tansu with aiokafka can skip a batch) is also caught where it happens,
even at the end of a partition where no later position would reveal it: the reader reports its
position after each fetch (``check_position``), and a position past the offset after the last
message offered means the partition is read again from there.

Messages of another attempt are ignored. After a restart from checkpoint N every task restores its
state at N and the upstream tasks produce again, in the new attempt, everything after N; whatever
the previous attempt wrote after N (a replay, maybe not even the same records) is never applied.
So positions only need to be compared within an attempt, and a restored task's offsets only need
to be at or before the end of the log at the restart (``offsets()``: how far it had read).

Watermarks: a delivery carries the origin's watermark on its channel, and the origin's watermark
for the task is the least over the task's partitions (each is read on its own). Besides, an origin
sends one *task mark* per downstream task (to the task's first partition, not to each of its key
groups): watermark W once, on every partition it lists, the origin's message at the listed position
has been applied. That is sound for the same reason: positions of a channel are applied in order, so
every record the origin wrote to the task before the mark has been applied when it counts, and
partitions it never wrote to hold nothing back. The origin's watermark is the larger of the two.

Barrier alignment: a channel that delivers the barrier of checkpoint N waits; its later messages
are not applied (held back). When every channel waits at N (or its origin finished), the task is
aligned: the caller snapshots its state with ``offsets()`` and calls ``release``. Held-back messages
are not buffered: the partition is read again from after the barrier (rule 1 drops what the other
channels had already applied), so memory stays bounded however far the origins drift apart. A
barrier of a newer checkpoint before alignment completes abandons the older one (as Flink does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK
from heliosdb_streaming.runtime.exchange import wire
from heliosdb_streaming.runtime.exchange.base import Delivery

log = logging.getLogger(__name__)


class ExchangeGapError(RuntimeError):
    """A channel's messages stay missing after reading its partition again many times."""


@dataclass(frozen=True, slots=True)
class Aligned:
    """Every channel of the task delivered checkpoint ``checkpoint_id``'s barrier: snapshot now."""

    checkpoint_id: int


class _Channel:
    __slots__ = ("after", "applied", "blocked", "held", "mark")

    def __init__(self) -> None:
        self.applied = 0  # highest position applied in this attempt
        self.after: int | None = None  # offset just after the last applied message
        self.mark = MIN_WATERMARK  # the origin's watermark on this partition
        self.blocked = 0  # checkpoint id whose barrier this channel waits at (0: none)
        self.held = False  # messages after the barrier were skipped: read again on release


class Inbox:
    """The internal-topic input of one downstream task: ``partitions`` (its key groups), fed by
    ``origins`` (the upstream task ids), in run ``attempt``; ``start_offsets`` from its snapshot,
    ``beginnings`` the first offset of each partition's log (0 unless retention removed some)."""

    def __init__(
        self,
        partitions: Sequence[int],
        origins: Iterable[str],
        attempt: int,
        start_offsets: Mapping[int, int] | None = None,
        beginnings: Mapping[int, int] | None = None,
        max_gaps: int = 20,
    ) -> None:
        self.partitions = sorted(partitions)
        self.attempt = attempt
        self.max_gaps = max_gaps
        self._origins: list[str] = []
        self._channels: dict[tuple[int, str], _Channel] = {}
        # per origin: its least mark over the task's partitions, and how many channels are at it
        self._low: dict[str, tuple[int, int]] = {}
        for origin in origins:
            self._add_origin(origin)
        self._read: dict[int, int] = {
            p: int(o) for p, o in (start_offsets or {}).items() if p in self.partitions
        }
        self._beginnings = {p: int((beginnings or {}).get(p, 0)) for p in self.partitions}
        # the next offset each partition should deliver
        self._expect: dict[int, int] = {p: self._read.get(p, self._beginnings[p]) for p in self.partitions}
        self._skips: dict[int, tuple[int, int]] = {}  # partition -> (expected offset, times read again)
        self._out: list[Delivery | Aligned] = []
        self._seeks: dict[int, int] = {}
        self._gaps: dict[int, int] = {}
        self._aligning = 0
        self._aligned = False
        # per origin: task marks not yet satisfied, oldest first (watermark, partition -> position
        # still to apply), and the latest satisfied one's watermark
        self._pending_marks: dict[str, list[tuple[int, dict[int, int]]]] = {}
        self._promised: dict[str, int] = {}
        self.completed = 0
        self.duplicates = 0
        self.other_attempts = 0

    def _add_origin(self, origin: str) -> None:
        self._origins.append(origin)
        for p in self.partitions:
            self._channels[(p, origin)] = _Channel()
        self._low[origin] = (MIN_WATERMARK, len(self.partitions))

    # -------------------------------------------------------------------------------- feeding

    def offer(self, partition: int, offset: int, value: bytes | None) -> None:
        """Takes one fetched message of ``partition`` (raises ``WireFormatError`` on a corrupt one)."""
        if partition in self._seeks:
            return  # fetched before the seek the caller is about to make: it comes again
        expected = self._expect.get(partition)
        if expected is not None and offset > expected:
            self._skipped(partition, expected, offset)  # the fetch skipped messages before this one
            return
        if offset >= self._read.get(partition, 0):
            self._read[partition] = offset + 1
        self._expect[partition] = offset + 1
        self._skips.pop(partition, None)
        message = wire.decode(value)
        if message.attempt != self.attempt:
            self.other_attempts += 1
            return
        channel = self._channels.get((partition, message.origin))
        if channel is None:
            self._add_origin(message.origin)
            channel = self._channels[(partition, message.origin)]
        position = message.position
        if position <= channel.applied:
            self.duplicates += 1
            return
        if channel.blocked:
            channel.held = True
            return
        if position > channel.applied + 1:
            self._on_gap(partition, message.origin, channel, position)
            return
        self._gaps.pop(partition, None)
        channel.applied = position
        channel.after = offset + 1
        if message.origin in self._pending_marks:
            self._satisfy(message.origin, partition, position)
        if message.is_barrier:
            self._on_barrier(partition, message.origin, channel, message.checkpoint_id)
        elif message.kind == wire.TASK_MARK:
            self._on_task_mark(message.origin, message.watermark, message.requires or [])
            watermark = self.watermark_of(message.origin)
            self._out.append(Delivery(message.origin, partition, [], watermark, position))
        else:
            if message.watermark > channel.mark:
                self._raise_mark(message.origin, channel, message.watermark)
            records = message.records if message.records is not None else []
            self._out.append(
                Delivery(
                    message.origin,
                    partition,
                    records,
                    self.watermark_of(message.origin),
                    position,
                    message.ingest_ms,
                )
            )
            if channel.mark == MAX_WATERMARK and self._aligning:
                self._check_aligned()

    def watermark_of(self, origin: str) -> int:
        """The origin's watermark for this task: the least of its channel marks, or its latest
        satisfied task mark if that is larger."""
        low = self._low[origin][0]
        promised = self._promised.get(origin, MIN_WATERMARK)
        return promised if promised > low else low

    def _on_task_mark(self, origin: str, watermark: int, requires: list[list[int]]) -> None:
        remaining = {}
        for partition, position in requires:
            channel = self._channels.get((partition, origin))
            if channel is not None and channel.applied < position:
                remaining[partition] = position
        self._pending_marks.setdefault(origin, []).append((watermark, remaining))
        self._settle(origin)

    def _satisfy(self, origin: str, partition: int, position: int) -> None:
        for _watermark, remaining in self._pending_marks[origin]:
            need = remaining.get(partition)
            if need is not None and position >= need:
                del remaining[partition]
        self._settle(origin)

    def _settle(self, origin: str) -> None:
        """Satisfied task marks, oldest first, raise the origin's promised watermark (a later mark
        requires at least what an earlier one did, so they are satisfied in order)."""
        pending = self._pending_marks[origin]
        while pending and not pending[0][1]:
            watermark = pending.pop(0)[0]
            if watermark > self._promised.get(origin, MIN_WATERMARK):
                self._promised[origin] = watermark
        if not pending:
            del self._pending_marks[origin]

    def _raise_mark(self, origin: str, channel: _Channel, mark: int) -> None:
        """Raises a channel's mark and the origin's watermark for this task, which is the least over
        its partitions (each is read on its own, so a mark seen on one partition says nothing about
        records still due on another). Incremental: the minimum is recomputed only when the last
        channel at it moves."""
        low, at_low = self._low[origin]
        was = channel.mark
        channel.mark = mark
        if was != low:
            return
        if at_low > 1:
            self._low[origin] = (low, at_low - 1)
            return
        marks = [self._channels[(p, origin)].mark for p in self.partitions]
        low = min(marks)
        self._low[origin] = (low, marks.count(low))

    def _on_gap(self, partition: int, origin: str, channel: _Channel, position: int) -> None:
        gaps = self._gaps.get(partition, 0) + 1
        if gaps > self.max_gaps:
            raise ExchangeGapError(
                f"partition {partition}: origin {origin!r} position {channel.applied + 1} still missing "
                f"(next seen {position}) after reading the partition again {self.max_gaps} times"
            )
        self._gaps[partition] = gaps
        log.info(
            "partition %d: origin %r skips from %d to %d; reading again from %s",
            partition,
            origin,
            channel.applied,
            position,
            "the beginning" if channel.after is None else f"offset {channel.after}",
        )
        self._seek(partition, channel.after)

    def check_position(self, partition: int, position: int) -> None:
        """The reader's position in ``partition`` after a fetch: past what was offered means the
        fetch skipped messages at its end, so the partition is read again from the first one not
        offered."""
        expected = self._expect.get(partition)
        if expected is not None and position > expected and partition not in self._seeks:
            self._skipped(partition, expected, position)

    def _skipped(self, partition: int, expected: int, seen: int) -> None:
        """Offsets ``expected..seen-1`` were not fetched. Offsets of an internal topic are contiguous
        (no transactions, no compaction): the same offset still missing after ``max_gaps`` readings
        fails the task."""
        at, times = self._skips.get(partition, (expected, 0))
        times = times + 1 if at == expected else 1
        if times > self.max_gaps:
            raise ExchangeGapError(
                f"partition {partition}: offset {expected} still not fetched after reading the partition "
                f"again {self.max_gaps} times (next seen: {seen})"
            )
        self._skips[partition] = (expected, times)
        log.info(
            "partition %d: the fetch skipped offsets %d..%d; reading them again",
            partition,
            expected,
            seen - 1,
        )
        self._seek(partition, expected)

    def _seek(self, partition: int, offset: int | None) -> None:
        """Asks to read ``partition`` again from ``offset`` (None: its beginning)."""
        target = self._beginnings.get(partition, 0) if offset is None else offset
        self._seeks[partition] = min(target, self._seeks.get(partition, target))

    # ------------------------------------------------------------------------------- barriers

    def _on_barrier(self, partition: int, origin: str, channel: _Channel, checkpoint_id: int) -> None:
        if checkpoint_id <= self.completed or (self._aligning and checkpoint_id < self._aligning):
            return  # an abandoned or older checkpoint
        if self._aligning and checkpoint_id > self._aligning:
            log.info(
                "barrier of checkpoint %d before checkpoint %d aligned: abandoning it",
                checkpoint_id,
                self._aligning,
            )
            self._unblock_all()
        self._aligning = checkpoint_id
        channel.blocked = checkpoint_id
        self._check_aligned()

    def _check_aligned(self) -> None:
        if self._aligned or not self._aligning:
            return
        for channel in self._channels.values():
            if channel.blocked != self._aligning and channel.mark != MAX_WATERMARK:
                return
        self._aligned = True
        self._out.append(Aligned(self._aligning))

    def release(self, checkpoint_id: int) -> None:
        """Called once the task snapshotted at ``checkpoint_id``: the channels move on."""
        if not self._aligned or checkpoint_id != self._aligning:
            raise ValueError(
                f"release({checkpoint_id}) but the task is aligned at {self._aligning or 'none'}"
            )
        self.completed = checkpoint_id
        self._unblock_all()

    def _unblock_all(self) -> None:
        for (partition, _origin), channel in self._channels.items():
            if channel.held:
                self._seek(partition, channel.after)
            channel.blocked = 0
            channel.held = False
        self._aligning = 0
        self._aligned = False

    # ------------------------------------------------------------------------------- results

    def take(self) -> list[Delivery | Aligned]:
        """What became ready since the last call, in order (an ``Aligned`` comes last)."""
        out, self._out = self._out, []
        return out

    def seeks(self) -> dict[int, int]:
        """Partitions to read again from an offset; the caller seeks."""
        seeks, self._seeks = self._seeks, {}
        self._expect.update(seeks)
        return seeks

    def offsets(self) -> dict[int, int]:
        """Per partition, how far it was read: where a restored task (in a later attempt) resumes."""
        return dict(self._read)

    @property
    def finished(self) -> bool:
        """Every origin sent its end-of-input mark (MAX_WATERMARK) on every partition of the task:
        nothing more will come (unlike idleness, which only stops an origin holding time back)."""
        return all(low == MAX_WATERMARK for low, _count in self._low.values())

    @property
    def origins(self) -> list[str]:
        return list(self._origins)
