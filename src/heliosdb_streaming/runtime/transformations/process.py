"""Keyed process functions: user code with per-key state and timers (the ``process`` step).

Semantics (Flink's ``KeyedProcessFunction`` with a per-record watermark, as the window step):

* Each record is handled by ``function.process(record, ctx)`` with ``ctx.key`` the value of the
  step's key expression, ``ctx.timestamp`` its event time (``time_field``; ``None`` when the record has
  none, and then it does not move the watermark) and ``ctx.watermark`` the watermark before it.
* The watermark is ``max event time seen - max_out_of_orderness_ms - 1`` and advances after each
  record; every event-time timer at or before it then fires, in (time, key) order, before the next
  record. A timer registered at or before the watermark fires at the next advance (or at the end).
  In a later stage of a job (``external_watermark``: the records were regrouped by key across
  splits) the watermark is the stage's instead, the minimum over its origins
  (``advance_watermark``): a key group's own events would move only that group's event time, and a
  group whose keys went quiet would never fire its timers.
* Processing-time timers fire from ``on_time(now_ms)`` (the data path's timer tick, a few times a
  second) once ``now_ms`` reaches them. ``on_end`` (the end of bounded input) fires every pending
  event-time timer with the watermark at its maximum; pending processing-time timers stay pending.
* Output is what ``process``/``on_timer`` return: ``None`` or an iterable of dicts. An exception in
  user code is an error of the record (or of the timer), handled by the job's ``on_error``; the
  output of that call is dropped, state it changed before raising stays changed. An output item that
  is not a dict is an error too; the call's other items pass.

State: the function's state (:mod:`runtime.state.keyed`), its timers (:mod:`runtime.state.timers`)
and ``meta`` = ``[watermark]`` all live in the step's store, so a checkpoint of the store between two
batches captures the step exactly; :meth:`restore` rebuilds the in-memory timer heaps from it. A
RocksDB store is used through a write-back cache (:mod:`runtime.state.cached`): the checkpoint
participant calls :meth:`ProcessTransformation.before_snapshot` before it snapshots the stores.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from typing import Any

from heliosdb_streaming.functions import Context, KeyedProcessFunction, TimeDomain, TimerService
from heliosdb_streaming.functions.state import ListState, MapState, ValueState
from heliosdb_streaming.runtime.contracts import Batch, Record, StateStore
from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK, event_time_field_value
from heliosdb_streaming.runtime.state.cached import WriteBackCache
from heliosdb_streaming.runtime.state.keyed import KeyedStateRegistry, KeyScope, key_string
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.state.timers import EVENT, PROCESSING, TimerQueue
from heliosdb_streaming.runtime.transformations.python import UserFunctionError

_META = "meta"
_KEY_CACHE = 65_536  # canonical key strings remembered for str/int keys (cleared when full)


class _Timers(TimerService):
    """The timer service of one function: both queues, scoped to the key being handled."""

    __slots__ = ("_clock", "_scope", "_step", "events", "processing")

    def __init__(self, store: StateStore, scope: KeyScope, step: ProcessTransformation) -> None:
        self.events = TimerQueue(store, EVENT)
        self.processing = TimerQueue(store, PROCESSING)
        self._scope = scope
        self._step = step

    def register_event_time_timer(self, timestamp: int) -> None:
        self.events.register(timestamp, self._scope.key, self._scope.current())

    def delete_event_time_timer(self, timestamp: int) -> None:
        self.events.delete(timestamp, self._scope.current())

    def register_processing_time_timer(self, timestamp: int) -> None:
        self.processing.register(timestamp, self._scope.key, self._scope.current())

    def delete_processing_time_timer(self, timestamp: int) -> None:
        self.processing.delete(timestamp, self._scope.current())

    def current_processing_time(self) -> int:
        return self._step.now_ms()

    def current_watermark(self) -> int:
        return self._step.watermark


class _Context(Context, KeyScope):
    """The one context object of a function instance, reused for every call: the step sets its
    fields before each call (per event only ``key``, ``kstr`` and ``timestamp``; the watermark when it
    moves, the time domain around timers). It is also the key scope of the state handles and
    timers, so setting the key once scopes them all."""

    def __init__(self, store: StateStore) -> None:
        KeyScope.__init__(self)
        self._registry = KeyedStateRegistry(store, self)
        self.timestamp = None
        self.watermark = MIN_WATERMARK
        self.time_domain = None

    def value_state(self, name: str, default: Any = None) -> ValueState:
        return self._registry.value_state(name, default)

    def map_state(self, name: str) -> MapState:
        return self._registry.map_state(name)

    def list_state(self, name: str) -> ListState:
        return self._registry.list_state(name)


class ProcessTransformation:
    """Runs one instance of a user's ``KeyedProcessFunction``; see the module docstring."""

    def __init__(
        self,
        store: StateStore,
        function: KeyedProcessFunction,
        *,
        key_fn: Callable[[Record], Any],
        function_name: str,
        time_field: str = "timestamp",
        max_out_of_orderness_ms: int = 0,
        now_ms: Callable[[], int] | None = None,
        name: str = "process",
        external_watermark: bool = False,
        key_field: str | None = None,
    ) -> None:
        if max_out_of_orderness_ms < 0:
            raise ValueError("max_out_of_orderness_ms must not be negative")
        self.name = name
        self.function_name = function_name
        self.time_field = time_field
        self.now_ms: Callable[[], int] = now_ms or (lambda: int(_time.time() * 1000))
        self._fn = function
        self._key_fn = key_fn
        # the key is a bare field (``key_fn`` is ``record.get(key_field)``): read inline, no call
        self._key_field = key_field
        self._ooo = max_out_of_orderness_ms
        # a later stage's first event-time step: the watermark comes from ``advance_watermark`` (the
        # minimum over the stage's origins), not from this key group's own events
        self.external_watermark = external_watermark
        # RocksDB (any store but the in-memory one) behind a write-back cache, written back before
        # each snapshot (before_snapshot) and at the end of input
        self._cache = None if isinstance(store, MemoryStateStore) else WriteBackCache(store)
        store = self._cache or store
        self._store = store
        self._ctx = _Context(store)
        self._timers = self._ctx.timer_service = _Timers(store, self._ctx, self)
        self._wm = MIN_WATERMARK
        self._stored_wm = MIN_WATERMARK  # the watermark in the store's meta
        self._kstrs: dict[Any, str] = {}
        self._timer_errors: list[tuple[Record, Exception]] = []
        self.restore()
        try:
            function.open(self._ctx)
        except Exception as e:
            raise self._user_error("open", e) from e

    @property
    def watermark(self) -> int:
        return self._wm

    def restore(self) -> None:
        """Reads the watermark and rebuilds the timer heaps from the store."""
        meta = self._store.get(_META)
        self._wm = self._stored_wm = MIN_WATERMARK if meta is None else int(meta[0])
        self._timers.events.restore()
        self._timers.processing.restore()

    def pending_timers(self, domain: TimeDomain) -> list[tuple[int, Any]]:
        """The pending timers of a domain as (time, key), in firing order."""
        queue = self._timers.events if domain == TimeDomain.EVENT_TIME else self._timers.processing
        return list(queue.pending())

    # ------------------------------------------------------------------------------ data path

    def process(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        out: Batch = []
        append = out.append
        fn = self._fn.process
        ctx = self._ctx
        key_fn = self._key_fn
        key_field = self._key_field
        kstrs = self._kstrs
        time_field = self.time_field
        ooo = self._ooo
        events = self._timers.events
        heap = events.heap
        wm = wm_before = self._wm
        own_time = not self.external_watermark
        ctx.watermark = wm
        ctx.time_domain = None
        for record in records:
            try:
                key = record.get(key_field) if key_field is not None else key_fn(record)
                ts = record.get(time_field)
                if ts is not None and type(ts) is not int:
                    ts = event_time_field_value(ts, time_field)
            except Exception as e:
                errors.append((record, e))
                continue
            kt = type(key)
            if kt is str or kt is int:
                kstr = kstrs.get(key)
                if kstr is None:
                    if len(kstrs) >= _KEY_CACHE:
                        kstrs.clear()
                    kstr = kstrs[key] = key_string(key)
            else:
                kstr = key_string(key)
            ctx.key = key
            ctx.kstr = kstr
            ctx.timestamp = ts
            try:
                result = fn(record, ctx)
                if result is None:
                    pass
                elif type(result) is list and len(result) == 1 and type(result[0]) is dict:
                    append(result[0])  # the common case: one record
                elif type(result) is list and all(type(item) is dict for item in result):
                    out.extend(result)
                else:
                    self._emit(result, out, record, errors, "process")
            except Exception as e:
                errors.append((record, self._user_error("process", e)))
            if ts is not None and own_time:
                t = ts - ooo - 1
                if t > wm:
                    self._wm = ctx.watermark = wm = t
                    if heap and heap[0][0] <= t:
                        self._fire(events, t, TimeDomain.EVENT_TIME, out, errors)
                        ctx.time_domain = None
        if wm != wm_before:
            self._put_watermark()
        return out

    def advance_watermark(self, watermark: int, errors: list[tuple[Record, Exception]]) -> Batch:
        """External-watermark mode: event time is now ``watermark`` (the stage's, over all its
        origins); fires every event-time timer it makes due. Called for every key group of a stage at
        each rise, so the store is written only when a timer fires (and before a snapshot)."""
        if not self.external_watermark or watermark <= self._wm:
            return []
        self._wm = watermark
        heap = self._timers.events.heap
        if not heap or heap[0][0] > watermark:
            return []
        out: Batch = []
        self._fire(self._timers.events, watermark, TimeDomain.EVENT_TIME, out, errors)
        self._put_watermark()
        return out

    def _put_watermark(self) -> None:
        self._store.put(_META, [self._wm])
        self._stored_wm = self._wm

    def on_time(self, now_ms: int) -> Batch:
        out: Batch = []
        queue = self._timers.processing
        next_time = queue.next_time()
        if next_time is not None and next_time <= now_ms:
            self._fire(queue, now_ms, TimeDomain.PROCESSING_TIME, out, self._timer_errors)
        return out

    def on_end(self) -> Batch:
        out: Batch = []
        self._wm = MAX_WATERMARK
        self._fire(self._timers.events, MAX_WATERMARK, TimeDomain.EVENT_TIME, out, self._timer_errors)
        self._put_watermark()
        self.before_snapshot()
        return out

    def before_snapshot(self) -> None:
        """Writes buffered state to the store: called before a checkpoint snapshots the task's stores
        (with the watermark, which ``advance_watermark`` keeps in memory until a timer fires, so a
        restore resumes at it exactly)."""
        if self._wm != self._stored_wm:
            self._put_watermark()
        if self._cache is not None:
            self._cache.write_back()

    def take_errors(self) -> list[tuple[Record, Exception]]:
        """Errors of timers fired by ``on_time``/``on_end`` (those calls have no error list)."""
        errors, self._timer_errors = self._timer_errors, []
        return errors

    def close(self) -> None:
        """Calls the function's ``close`` (once, when the task ends)."""
        self._fn.close()

    # ------------------------------------------------------------------------------ helpers

    def _fire(
        self,
        queue: TimerQueue,
        until: int,
        domain: TimeDomain,
        out: Batch,
        errors: list[tuple[Record, Exception]],
    ) -> None:
        on_timer = self._fn.on_timer
        ctx = self._ctx
        while (due := queue.pop_due(until)) is not None:
            ts, key, kstr = due
            ctx.key = key
            ctx.kstr = kstr
            ctx.timestamp = ts
            ctx.watermark = self._wm
            ctx.time_domain = domain
            try:
                self._emit(on_timer(ts, ctx), out, None, errors, "on_timer", key=key, ts=ts)
            except Exception as e:
                where = {"key": key, "timer": ts, "time_domain": domain.value}
                errors.append((where, self._user_error("on_timer", e)))

    def _emit(
        self,
        result: Any,
        out: Batch,
        record: Record | None,
        errors: list[tuple[Record, Exception]],
        method: str,
        *,
        key: Any = None,
        ts: int | None = None,
    ) -> None:
        """Adds what a call returned to ``out``; iterating a generator runs user code, so its
        exceptions propagate to the caller (which drops the whole call's output)."""
        if result is None:
            return
        if type(result) is dict:
            raise UserFunctionError(
                f"{self.function_name}.{method}", "returned a dict: return a list of records or yield them"
            )
        items = list(result)  # runs a generator to its end before anything is emitted
        good = [i for i in items if isinstance(i, dict)]
        if len(good) < len(items):
            where: Record = record if record is not None else {"key": key, "timer": ts}
            for item in items:
                if not isinstance(item, dict):
                    message = f"returned {type(item).__name__} {item!r:.80}, not a dict record"
                    errors.append((where, UserFunctionError(f"{self.function_name}.{method}", message)))
        out.extend(good)

    def _user_error(self, method: str, e: Exception) -> UserFunctionError:
        if isinstance(e, UserFunctionError):
            return e
        error = UserFunctionError(f"{self.function_name}.{method}", f"raised {type(e).__name__}: {e}")
        error.__cause__ = e
        return error
