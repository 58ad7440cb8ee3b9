"""Window aggregation: tumbling, sliding and session windows on event or processing time.

Semantics (Flink's, with a per-record watermark):

* Windows are ``[start, end)`` in epoch milliseconds. Tumbling and sliding windows are aligned to the
  epoch (``start = ts - ts % size``, resp. ``% slide``). Session windows start as
  ``[ts, ts + gap)`` per event and merge with every window of the key they intersect (touching
  counts: an event exactly ``gap`` after the last one extends the session).
* Event time: the watermark is ``max event time seen by this task - max_out_of_orderness_ms - 1``
  (Flink's bounded out-of-orderness: more events at the largest time seen are not late) and
  advances record by record. A window fires when ``watermark >= end - 1`` (a session, which an
  event at ``end`` still extends, when ``watermark >= end``) and its state is kept until the
  watermark is ``allowed_lateness_ms`` past that. So input in event-time order never loses an
  event. In a later stage of a job (``external_watermark``) the watermark is not derived from the
  events: it is the minimum over the upstream tasks, set by :meth:`WindowTransformation.advance_watermark`.
  An event for a window that already fired but is still kept updates it and re-fires the
  updated result at once. An event whose windows are all past their lateness (judged against the
  watermark *before* the event) is dropped and counted in
  :attr:`WindowTransformation.late_dropped`. ``on_time`` does nothing.
* Processing time: a record belongs to the window(s) of ``now_ms()`` read once per batch; windows
  fire from ``on_time(now_ms)`` when ``now_ms >= end - 1`` (a session: ``>= end``); nothing is
  ever late.
* ``on_end`` fires every window that has not fired yet and clears all state (the final
  MAX_WATERMARK); event-time records arriving after it are late.
* Output: one record per (key, window) firing, ``{"key", "window_start", "window_end", <aggregate
  names>...}``. Each firing pass emits in order of (window_end, window_start, repr(key)).

State: every window is one store entry ``w|<start>|<end>|<repr(key)>`` holding the flat list
``[key, start, end, fired, *accumulators]``; ``meta`` holds the watermark and the late counter.
Entries touched in a call are cached (copied on load, so values once put are never mutated) and
written back at the end of each ``process``/``on_time``/``on_end``. The timer heaps and the
per-key session index are derived and rebuilt by :meth:`WindowTransformation.restore`.
"""

from __future__ import annotations

import heapq
import time as _time
from collections.abc import Callable
from typing import Any, Literal

from heliosdb_streaming.model.transformations import AGGREGATE_FUNCTIONS
from heliosdb_streaming.runtime.contracts import Batch, Record, StateStore
from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK, event_time_field_value

_NUMERIC = (int, float)
_MISSING: Any = object()
_META = "meta"
_PREFIX = "w|"
# entry layout: [key, start, end, fired, *slots]
_BASE = 4


def _field_getter(path: str) -> Callable[[Record], Any]:
    parts = path.split(".")
    if len(parts) == 1:
        name = parts[0]

        def get_one(record: Record) -> Any:
            return record.get(name)

        return get_one

    def get_path(record: Record) -> Any:
        value: Any = record
        for part in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
            if value is None:
                return None
        return value

    return get_path


class _Aggregates:
    """The compiled aggregates: value extraction (validating), accumulation, merging, results."""

    def __init__(self, aggregates: dict[str, tuple[str, str | None]]) -> None:
        self.names: list[str] = []
        self.init: list[Any] = []
        # (function, slot, getter or None, label) per aggregate
        self.specs: list[tuple[str, int, Callable[[Record], Any] | None, str]] = []
        slot = _BASE
        for out_name, spec in aggregates.items():
            if not isinstance(spec, tuple | list) or len(spec) != 2:
                raise ValueError(f"aggregate {out_name!r}: expected (function, field), got {spec!r}")
            func, field = spec
            if func not in AGGREGATE_FUNCTIONS:
                raise ValueError(f"aggregate {out_name!r}: unknown function {func!r}")
            if field is None and func != "count":
                raise ValueError(f"aggregate {out_name!r}: {func} needs a field")
            getter = None if field is None else _field_getter(field)
            label = f"{out_name} = {func}({'*' if field is None else field})"
            self.names.append(out_name)
            self.specs.append((func, slot, getter, label))
            if func in ("sum", "avg"):
                self.init += [0, 0]
                slot += 2
            elif func == "count":
                self.init.append(0)
                slot += 1
            else:
                self.init.append(None)
                slot += 1
        self.build_update()

    def build_update(self) -> None:
        """Builds the per-record hot path from closures: ``extract(record)`` and ``apply(entry, values)``.

        ``extract`` reads (and type-checks) every aggregated field before any accumulator changes, so a
        bad record leaves the window untouched.
        """
        getters: list[tuple[Callable[[Record], Any], str, bool]] = []
        updates: list[Callable[[list[Any], tuple[Any, ...]], None]] = []
        n = 0
        for func, slot, getter, label in self.specs:
            if getter is None:
                updates.append(_count_all(slot))
                continue
            getters.append((getter, label, func != "count"))
            updates.append(_UPDATERS[func](slot, n))
            n += 1

        def extract(r: Record) -> tuple[Any, ...]:
            values = []
            for get, label, numeric in getters:
                v = get(r)
                if numeric and v is not None and type(v) not in _NUMERIC:
                    _bad_value(label, v)
                values.append(v)
            return tuple(values)

        def apply(e: list[Any], v: tuple[Any, ...]) -> None:
            for update in updates:
                update(e, v)

        self.extract: Callable[[Record], tuple[Any, ...]] = extract
        self.apply: Callable[[list[Any], tuple[Any, ...]], None] = apply

    def merge(self, into: list[Any], other: list[Any]) -> None:
        for func, slot, _, _ in self.specs:
            if func in ("sum", "avg"):
                into[slot] += other[slot]
                into[slot + 1] += other[slot + 1]
            elif func == "count":
                into[slot] += other[slot]
            else:
                a, b = into[slot], other[slot]
                if a is None or (b is not None and (b < a if func == "min" else b > a)):
                    into[slot] = b

    def result(self, entry: list[Any]) -> Record:
        out: Record = {"key": entry[0], "window_start": entry[1], "window_end": entry[2]}
        for name, (func, slot, _, _) in zip(self.names, self.specs, strict=True):
            if func == "sum":
                out[name] = entry[slot] if entry[slot + 1] else None
            elif func == "avg":
                out[name] = entry[slot] / entry[slot + 1] if entry[slot + 1] else None
            else:
                out[name] = entry[slot]
        return out


Update = Callable[[list[Any], tuple[Any, ...]], None]


def _count_all(slot: int) -> Update:
    def update(e: list[Any], v: tuple[Any, ...]) -> None:
        e[slot] += 1

    return update


def _count(slot: int, i: int) -> Update:
    def update(e: list[Any], v: tuple[Any, ...]) -> None:
        if v[i] is not None:
            e[slot] += 1

    return update


def _sum(slot: int, i: int) -> Update:
    def update(e: list[Any], v: tuple[Any, ...]) -> None:
        x = v[i]
        if x is not None:
            e[slot] += x
            e[slot + 1] += 1

    return update


def _min(slot: int, i: int) -> Update:
    def update(e: list[Any], v: tuple[Any, ...]) -> None:
        x = v[i]
        if x is not None and (e[slot] is None or x < e[slot]):
            e[slot] = x

    return update


def _max(slot: int, i: int) -> Update:
    def update(e: list[Any], v: tuple[Any, ...]) -> None:
        x = v[i]
        if x is not None and (e[slot] is None or x > e[slot]):
            e[slot] = x

    return update


_UPDATERS: dict[str, Callable[[int, int], Update]] = {
    "count": _count,
    "sum": _sum,
    "avg": _sum,
    "min": _min,
    "max": _max,
}


def _bad_value(label: str, value: Any) -> None:
    raise TypeError(f"aggregate {label} needs a number, got {type(value).__name__} {value!r}")


class WindowTransformation:
    """Keyed window aggregation; see the module docstring for the exact semantics."""

    def __init__(
        self,
        store: StateStore,
        *,
        kind: Literal["tumbling", "sliding", "session"],
        size_ms: int | None = None,
        slide_ms: int | None = None,
        gap_ms: int | None = None,
        time: Literal["event", "processing"] = "event",
        time_field: str = "timestamp",
        allowed_lateness_ms: int = 0,
        max_out_of_orderness_ms: int = 0,
        key_fn: Callable[[Record], Any] | None = None,
        aggregates: dict[str, tuple[str, str | None]],
        name: str = "window",
        now_ms: Callable[[], int] | None = None,
        external_watermark: bool = False,
    ) -> None:
        if kind not in ("tumbling", "sliding", "session"):
            raise ValueError(f"unknown window kind {kind!r}: use tumbling, sliding or session")
        if time not in ("event", "processing"):
            raise ValueError(f"unknown window time {time!r}: use event or processing")
        if kind in ("tumbling", "sliding") and (size_ms is None or size_ms <= 0):
            raise ValueError(f"a {kind} window needs a positive size")
        if kind == "sliding" and (slide_ms is None or slide_ms <= 0):
            raise ValueError("a sliding window needs a positive slide")
        if kind == "session" and (gap_ms is None or gap_ms <= 0):
            raise ValueError("a session window needs a positive gap")
        if allowed_lateness_ms < 0 or max_out_of_orderness_ms < 0:
            raise ValueError("allowed lateness and max out-of-orderness must not be negative")
        self.name = name
        self.kind = kind
        self.time = time
        self.time_field = time_field
        self.late_dropped = 0
        # in a stage fed by an exchange, event time is the minimum over the upstream tasks
        # (advance_watermark), not what this step sees: its input interleaves several origins
        self.external_watermark = external_watermark and time == "event"
        self._size = size_ms or 0
        self._slide = slide_ms or 0
        self._gap = gap_ms or 0
        self._event_time = time == "event"
        # processing-time windows are never late: they are dropped as soon as they fire
        self._lateness = allowed_lateness_ms if self._event_time else 0
        self._ooo = max_out_of_orderness_ms
        # A window [start, end) is complete once the watermark reaches end - tail: its last
        # millisecond (tail 1), or for a session ``end`` itself, since an event at ``end`` still
        # extends it (touching sessions merge) and in-order input must never split one (tail 0).
        self._tail = 0 if kind == "session" else 1
        self._key_fn = key_fn
        self._aggs = _Aggregates(aggregates)
        self._now_ms: Callable[[], int] = now_ms or (lambda: int(_time.time() * 1000))
        self._store = store
        self._hot: dict[str, list[Any] | None] = {}
        self._fire_heap: list[tuple[int, int, str]] = []
        self._cleanup_heap: list[tuple[int, int, str]] = []
        self._sessions: dict[str, list[list[int]]] = {}
        self._wm = MIN_WATERMARK
        self._meta: list[int] = [MIN_WATERMARK, 0]
        self.restore()

    # ------------------------------------------------------------------------------ state

    def restore(self) -> None:
        """Rebuilds the in-memory indexes (timer heaps, session index) from the store."""
        self._hot.clear()
        self._fire_heap = []
        self._cleanup_heap = []
        self._sessions = {}
        meta = self._store.get(_META)
        if meta is not None:
            self._wm, self.late_dropped = int(meta[0]), int(meta[1])
        else:
            self._wm, self.late_dropped = MIN_WATERMARK, 0
        self._meta = [self._wm, self.late_dropped]
        for sk, entry in self._store.items(_PREFIX):
            _, s, e, kstr = sk.split("|", 3)
            start, end = int(s), int(e)
            (self._cleanup_heap if entry[3] else self._fire_heap).append((end, start, kstr))
            if self.kind == "session":
                self._sessions.setdefault(kstr, []).append([start, end])
        heapq.heapify(self._fire_heap)
        heapq.heapify(self._cleanup_heap)

    def _flush(self) -> None:
        store = self._store
        for sk, entry in self._hot.items():
            if entry is None:
                store.delete(sk)
            else:
                store.put(sk, entry)
        self._hot.clear()
        if self._meta[0] != self._wm or self._meta[1] != self.late_dropped:
            self._meta = [self._wm, self.late_dropped]
            store.put(_META, list(self._meta))

    def _get(self, sk: str) -> list[Any] | None:
        entry = self._hot.get(sk, _MISSING)
        if entry is _MISSING:
            stored = self._store.get(sk)
            if stored is None:
                return None
            entry = self._hot[sk] = list(stored)
        return entry  # type: ignore[no-any-return]

    def _delete(self, sk: str, kstr: str, start: int, end: int) -> None:
        self._hot[sk] = None
        if self.kind == "session":
            windows = self._sessions.get(kstr)
            if windows is not None:
                windows.remove([start, end])
                if not windows:
                    del self._sessions[kstr]

    # ------------------------------------------------------------------------------ data path

    @property
    def watermark(self) -> int:
        return self._wm

    def process(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        out: Batch = []
        event_time = self._event_time
        advance = event_time and not self.external_watermark
        time_field = self.time_field
        key_fn = self._key_fn
        extract = self._aggs.extract
        apply = self._aggs.apply
        hot = self._hot
        ooo = self._ooo
        lateness = self._lateness
        kind = self.kind
        size = self._size
        slide = self._slide
        fire_heap = self._fire_heap
        ts: Any = 0 if event_time else self._now_ms()
        for record in records:
            try:
                if event_time:
                    ts = record.get(time_field)
                    if type(ts) is not int:
                        ts = self._parse_time(ts)
                key = key_fn(record) if key_fn is not None else None
                values = extract(record)
            except Exception as e:
                errors.append((record, e))
                continue
            wm = self._wm
            kstr = repr(key)
            if kind == "tumbling":
                start = ts - ts % size
                end = start + size
                if end - 1 + lateness <= wm:
                    self.late_dropped += 1
                    continue
                entry = hot.get(f"w|{start}|{end}|{kstr}")
                if entry is not None and end - 1 > wm:
                    apply(entry, values)  # hot path: an open window already touched in this call
                else:
                    self._add(key, kstr, start, end, values, out)
            elif kind == "sliding":
                start = ts - ts % slide
                accepted = rejected = 0
                while start > ts - size:
                    end = start + size
                    if end - 1 + lateness <= wm:
                        rejected += 1
                    else:
                        accepted += 1
                        self._add(key, kstr, start, end, values, out)
                    start -= slide
                if rejected and not accepted:
                    self.late_dropped += 1
                    continue
            else:
                if not self._add_session(key, kstr, ts, values, out):
                    self.late_dropped += 1
                    continue
            if advance:
                t = ts - ooo - 1  # Flink: in-order events at the max time are not late
                if t > wm:
                    self._wm = t
                    if (fire_heap and fire_heap[0][0] - self._tail <= t) or (
                        self._cleanup_heap and self._cleanup_heap[0][0] - self._tail + lateness <= t
                    ):
                        self._fire_due(t, out)
        self._flush()
        return out

    def _parse_time(self, value: Any) -> int:
        return event_time_field_value(value, self.time_field)

    def _add(self, key: Any, kstr: str, start: int, end: int, values: tuple[Any, ...], out: Batch) -> None:
        sk = f"w|{start}|{end}|{kstr}"
        entry = self._hot.get(sk)
        if entry is None:
            entry = self._get(sk)
            if entry is None:
                entry = [key, start, end, 0, *self._aggs.init]
                self._hot[sk] = entry
                if end - 1 > self._wm:
                    heapq.heappush(self._fire_heap, (end, start, kstr))
        self._aggs.apply(entry, values)
        if end - 1 <= self._wm:
            self._emit_due(entry, kstr, out)

    def _emit_due(self, entry: list[Any], kstr: str, out: Batch) -> None:
        """A window updated while already due (event time only): fire (again) at once."""
        out.append(self._aggs.result(entry))
        if not entry[3]:
            entry[3] = 1
            heapq.heappush(self._cleanup_heap, (entry[2], entry[1], kstr))

    def _add_session(self, key: Any, kstr: str, ts: int, values: tuple[Any, ...], out: Batch) -> bool:
        lo, hi = ts, ts + self._gap
        windows = self._sessions.get(kstr)
        overlapping: list[list[int]] = []
        if windows:
            for w in windows:
                if w[0] <= hi and w[1] >= lo:
                    overlapping.append(w)
                    lo = min(lo, w[0])
                    hi = max(hi, w[1])
        if hi + self._lateness <= self._wm:
            return False
        if len(overlapping) == 1 and overlapping[0][0] == lo and overlapping[0][1] == hi:
            entry = self._get(f"w|{lo}|{hi}|{kstr}")
            assert entry is not None
        else:
            entry = [key, lo, hi, 0, *self._aggs.init]
            for w in overlapping:
                old_sk = f"w|{w[0]}|{w[1]}|{kstr}"
                old = self._get(old_sk)
                if old is not None:
                    self._aggs.merge(entry, old)
                self._delete(old_sk, kstr, w[0], w[1])
            self._hot[f"w|{lo}|{hi}|{kstr}"] = entry
            self._sessions.setdefault(kstr, []).append([lo, hi])
            if hi > self._wm:
                heapq.heappush(self._fire_heap, (hi, lo, kstr))
        self._aggs.apply(entry, values)
        if hi <= self._wm:
            self._emit_due(entry, kstr, out)
        return True

    def _fire_due(self, wm: int, out: Batch) -> None:
        """Fires windows with ``end - tail <= wm`` and drops fired ones past their allowed lateness."""
        lateness, tail = self._lateness, self._tail
        heap = self._fire_heap
        while heap and heap[0][0] - tail <= wm:
            end, start, kstr = heapq.heappop(heap)
            sk = f"w|{start}|{end}|{kstr}"
            entry = self._get(sk)
            if entry is None or entry[3]:
                continue  # merged away, or already fired (duplicate timer)
            out.append(self._aggs.result(entry))
            if end - tail + lateness <= wm:
                self._delete(sk, kstr, start, end)
            else:
                entry[3] = 1
                heapq.heappush(self._cleanup_heap, (end, start, kstr))
        cleanup = self._cleanup_heap
        while cleanup and cleanup[0][0] - tail + lateness <= wm:
            end, start, kstr = heapq.heappop(cleanup)
            sk = f"w|{start}|{end}|{kstr}"
            entry = self._get(sk)
            if entry is not None and entry[3]:
                self._delete(sk, kstr, start, end)

    def advance_watermark(self, watermark: int, errors: list[tuple[Record, Exception]]) -> Batch:
        """External-watermark mode: event time is now ``watermark``; fires what it makes due.

        Called for every key group of a stage at each rise, so it only writes when something is due
        (the stored watermark may lag; the stage sets it again after a restore)."""
        if not self._event_time or watermark <= self._wm:
            return []
        self._wm = watermark
        tail = self._tail
        if (self._fire_heap and self._fire_heap[0][0] - tail <= watermark) or (
            self._cleanup_heap and self._cleanup_heap[0][0] - tail + self._lateness <= watermark
        ):
            out: Batch = []
            self._fire_due(watermark, out)
            self._flush()
            return out
        return []

    def on_time(self, now_ms: int) -> Batch:
        if self._event_time:
            return []
        out: Batch = []
        if self._fire_heap and self._fire_heap[0][0] - self._tail <= now_ms:
            self._fire_due(now_ms, out)
            self._flush()
        return out

    def on_end(self) -> Batch:
        out: Batch = []
        self._fire_due(MAX_WATERMARK, out)
        if self._event_time:
            self._wm = MAX_WATERMARK
        self._flush()
        return out
