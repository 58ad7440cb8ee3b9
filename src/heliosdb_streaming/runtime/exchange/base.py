"""The exchange: how records cross a stage boundary, and how a downstream task learns its watermark.

A job whose plan has boundaries (``model/plan.py``) runs its later stages in key-group tasks. At a
boundary, every upstream task (an *origin*: a split task of stage 0, or a key-group task of a later
stage) hands its output to the exchange already split by key group (``keygroups.key_group`` of the
record's key, or the one group of a global stage), together with the origin's event-time watermark
after those records. The tasks of the next stage receive, for the key groups they own, the records
of each origin in the origin's order, with the watermarks.

Two implementations: in process (one worker owns every split and every key group: the records are
handed over synchronously, within the batch that produced them, so a checkpoint taken between two
batches has nothing in flight), and across worker processes (an internal Kafka topic per boundary,
partition = key group, origin and origin position in each record so replays can be dropped).

Watermarks: a downstream task's event time is the minimum over its origins of their watermarks
(:class:`OriginWatermarks`); an origin silent for ``idle_timeout`` is left out of the minimum, and an
origin that finished sends :data:`~heliosdb_streaming.runtime.eventtime.MAX_WATERMARK` and is left
out too, so it never holds event time back again (nor pushes it to the end while others still run).
If every running origin is idle, the largest of their watermarks counts (Flink's
``StatusWatermarkValve``): what each origin has said is complete stays complete.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from heliosdb_streaming.runtime.contracts import Batch
from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK


@dataclass(frozen=True, slots=True)
class Delivery:
    """Records of one origin for one key group, in the origin's order, and the origin's watermark
    after them. ``records`` may be empty: a watermark mark (MAX_WATERMARK: the origin finished).

    ``position`` is the origin's sequence number of this delivery (increasing per origin and
    boundary); a cross-process exchange uses it to drop replays, in process it is informative.
    ``ingest_ms``: the earliest ingestion time (wall clock, ms) of the records, so the sink after
    the last stage records end-to-end latency (None: not known, e.g. a timer's output)."""

    origin: str
    group: int
    records: Batch
    watermark: int
    position: int = 0
    ingest_ms: float | None = None


class Exchange(Protocol):
    """Carries records across the job's stage boundaries (boundary ``b`` feeds stage ``b``).

    The worker calls ``send`` from its processing loop (it must not block: buffer), then ``receive``
    for the key groups its stage tasks own; ``flush`` is awaited where the worker flushes its sinks
    (in process) or only at checkpoints and at the end of input (across processes, where it waits
    for the broker), and before a checkpoint acknowledges, so everything sent before it is visible
    downstream.
    """

    def send(
        self,
        boundary: int,
        origin: str,
        groups: Mapping[int, Batch],
        watermark: int,
        ingest_ms: float | None = None,
    ) -> None:
        """Hands one origin's output to stage ``boundary``: records per key group (any group may be
        missing), and the origin's watermark after them (sent even when ``groups`` is empty, to
        every task of the stage, so a quiet origin still moves event time). ``ingest_ms``: the
        earliest ingestion time of the records (it travels with them, for the sink's latency)."""
        ...

    def receive(self, boundary: int, groups: range) -> list[Delivery]:
        """What arrived for the key groups ``groups`` of stage ``boundary`` since the last call, per
        origin in the origin's order (watermark-only deliveries included, with an empty ``records``)."""
        ...

    async def flush(self) -> None:
        """Makes everything sent so far durable and visible to the receiving tasks."""
        ...


class OriginWatermarks:
    """The input watermark of one downstream task: the minimum over its origins, with idleness.

    ``origins`` are the upstream task ids the task expects to hear from; one that has not sent
    anything yet holds the watermark at MIN_WATERMARK until it does or until ``idle_timeout_s``
    passes. Times (``now``) are monotonic seconds, given by the caller (pure logic, testable).
    The watermark it reports never goes back.
    """

    __slots__ = ("_current", "_idle_s", "_last_active", "_marks")

    def __init__(self, origins: Iterable[str], idle_timeout_s: float, now: float) -> None:
        self._idle_s = idle_timeout_s
        self._marks: dict[str, int] = dict.fromkeys(origins, MIN_WATERMARK)
        self._last_active: dict[str, float] = dict.fromkeys(self._marks, now)
        self._current = MIN_WATERMARK

    def update(self, origin: str, watermark: int, now: float) -> None:
        """Records a delivery (records or a mark) of ``origin``: it is active, its mark may rise."""
        self._marks[origin] = max(self._marks.get(origin, MIN_WATERMARK), watermark)
        self._last_active[origin] = now

    def current(self, now: float) -> int:
        """The watermark now: the minimum over origins heard from within the idle timeout; finished
        origins are left out (all finished: MAX_WATERMARK); all idle: the largest of their marks."""
        if not self._marks:
            return self._current
        deadline = now - self._idle_s
        running = [origin for origin, mark in self._marks.items() if mark != MAX_WATERMARK]
        if not running:
            candidate = MAX_WATERMARK
        else:
            active = [self._marks[o] for o in running if self._last_active[o] > deadline]
            candidate = min(active) if active else max(self._marks[o] for o in running)
        if candidate > self._current:
            self._current = candidate
        return self._current

    def snapshot(self) -> dict[str, Any]:
        """The marks per origin and the watermark (for a checkpoint; activity times are not kept)."""
        return {"marks": dict(self._marks), "watermark": self._current}

    def restore(self, saved: Mapping[str, Any], now: float) -> None:
        """Takes a snapshot's marks back; every origin counts as active from ``now``."""
        for origin, mark in dict(saved.get("marks", {})).items():
            self._marks[str(origin)] = int(mark)
            self._last_active[str(origin)] = now
        self._current = max(self._current, int(saved.get("watermark", MIN_WATERMARK)))
