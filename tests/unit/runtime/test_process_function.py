"""The process step: user code per record with keyed state, event- and processing-time timers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from heliosdb_streaming.functions import Context, KeyedProcessFunction, RuntimeContext, TimeDomain
from heliosdb_streaming.runtime.contracts import Record
from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.transformations.process import ProcessTransformation, UserFunctionError

Errors = list[tuple[Record, Exception]]
GAP = 100


class Totals(KeyedProcessFunction):
    """A running total per card, and a summary once a card is quiet for GAP ms of event time."""

    def open(self, ctx: RuntimeContext) -> None:
        self.total = ctx.value_state("total", default=0)
        self.timer = ctx.value_state("timer")
        self.merchants = ctx.map_state("merchants")

    def process(self, event: dict[str, Any], ctx: Context) -> Iterator[Record]:
        total = self.total.value() + event["amount"]
        self.total.update(total)
        self.merchants.put(event["merchant"], self.merchants.get(event["merchant"], 0) + 1)
        previous = self.timer.value()
        if previous is not None:
            ctx.timer_service.delete_event_time_timer(previous)
        assert ctx.timestamp is not None
        self.timer.update(ctx.timestamp + GAP)
        ctx.timer_service.register_event_time_timer(ctx.timestamp + GAP)
        yield {"card": ctx.key, "total": total, "at": ctx.timestamp, "wm": ctx.watermark}

    def on_timer(self, timestamp: int, ctx: Context) -> list[Record]:
        out = {
            "card": ctx.key,
            "quiet_at": timestamp,
            "total": self.total.value(),
            "merchants": dict(sorted(self.merchants.items())),
            "domain": ctx.time_domain,
        }
        self.total.clear()
        self.timer.clear()
        self.merchants.clear()
        return [out]


def make(
    store: MemoryStateStore | None = None, fn: KeyedProcessFunction | None = None, **kw: Any
) -> ProcessTransformation:
    return ProcessTransformation(
        store if store is not None else MemoryStateStore(),
        fn or Totals(),
        key_fn=lambda r: r.get("card"),
        function_name="tests:Totals",
        **kw,
    )


def ev(ts: int | str | None, card: str = "c1", amount: int = 1, merchant: str = "m", **more: Any) -> Record:
    return {"timestamp": ts, "card": card, "amount": amount, "merchant": merchant, **more}


def test_running_totals_per_key_and_a_timer_after_a_gap() -> None:
    step = make()
    errors: Errors = []
    out = step.process([ev(0, "c1", 5), ev(10, "c2", 1), ev(20, "c1", 2, "n")], errors)
    assert [(r["card"], r["total"], r["wm"]) for r in out] == [
        ("c1", 5, -(2**63)),
        ("c2", 1, -1),
        ("c1", 7, 9),
    ]
    assert step.pending_timers(TimeDomain.EVENT_TIME) == [(110, "c2"), (120, "c1")]  # c1's 100 deleted
    out = step.process([ev(115, "c3")], errors)  # watermark 114: c2 is quiet, c1 not yet
    assert out[0]["card"] == "c3"
    assert out[1:] == [
        {"card": "c2", "quiet_at": 110, "total": 1, "merchants": {"m": 1}, "domain": TimeDomain.EVENT_TIME}
    ]
    out = step.process([ev(121, "c2", 3)], errors)  # watermark 120: c1's timer, then c2 starts again
    assert [r.get("quiet_at") for r in out] == [None, 120]
    assert out[0]["total"] == 3  # c2's state was cleared by its timer
    assert out[1]["merchants"] == {"m": 1, "n": 1} and out[1]["total"] == 7
    assert errors == []
    assert step.watermark == 120


def test_end_of_input_fires_every_pending_event_time_timer() -> None:
    seen: list[int] = []

    class Remember(Totals):
        def on_timer(self, timestamp: int, ctx: Context) -> list[Record]:
            seen.append(ctx.watermark)
            return super().on_timer(timestamp, ctx)

    step = make(fn=Remember())
    during = step.process([ev(0, "a"), ev(5, "b"), ev(1000, "a"), ev(1001, "d")], [])
    assert [(r["card"], r["quiet_at"]) for r in during if "quiet_at" in r] == [("b", 105)]
    out = step.on_end()
    assert [(r["card"], r["quiet_at"]) for r in out] == [("a", 1100), ("d", 1101)]
    assert seen == [999, MAX_WATERMARK, MAX_WATERMARK]  # b once a's 1000 moved the watermark to 999
    assert step.pending_timers(TimeDomain.EVENT_TIME) == []
    assert step.on_end() == []


def test_records_without_event_time_do_not_move_the_watermark() -> None:
    class Times(KeyedProcessFunction):
        def process(self, event: dict[str, Any], ctx: Context) -> list[Record]:
            return [{"at": ctx.timestamp, "wm": ctx.watermark}]

    step = make(fn=Times(), max_out_of_orderness_ms=10)
    out = step.process([ev(50, "a"), ev(None, "a"), ev("1970-01-01T00:00:00.060Z", "b")], [])
    assert out == [{"at": 50, "wm": -(2**63)}, {"at": None, "wm": 39}, {"at": 60, "wm": 39}]
    assert step.watermark == 49


class Reminder(KeyedProcessFunction):
    def process(self, event: dict[str, Any], ctx: Context) -> None:
        now = ctx.timer_service.current_processing_time()
        ctx.timer_service.register_processing_time_timer(now + 1000)
        if event.get("cancel"):
            ctx.timer_service.delete_processing_time_timer(now + 1000)

    def on_timer(self, timestamp: int, ctx: Context) -> Iterator[Record]:
        yield {"key": ctx.key, "at": timestamp, "domain": ctx.time_domain, "ts": ctx.timestamp}


def test_processing_time_timers_fire_on_the_clock_not_at_the_end() -> None:
    clock = [5_000]
    step = make(fn=Reminder(), now_ms=lambda: clock[0])
    step.process([{"card": "a"}, {"card": "b", "cancel": True}], [])
    clock[0] = 5_500
    step.process([{"card": "c"}], [])
    assert step.on_time(5_999) == []
    assert step.on_time(6_000) == [
        {"key": "a", "at": 6_000, "domain": TimeDomain.PROCESSING_TIME, "ts": 6_000}
    ]
    assert step.on_end() == []  # processing-time timers do not fire at the end of input
    assert step.pending_timers(TimeDomain.PROCESSING_TIME) == [(6_500, "c")]


class Faulty(KeyedProcessFunction):
    def open(self, ctx: RuntimeContext) -> None:
        self.n = ctx.value_state("n", default=0)

    def process(self, event: dict[str, Any], ctx: Context) -> Any:
        self.n.update(self.n.value() + 1)
        kind = event["kind"]
        if kind == "raise":
            raise ValueError("bad amount")
        if kind == "raise_late":
            return self._late()
        if kind == "not_dict":
            return [{"ok": 1}, "text", {"ok": 2}]
        if kind == "dict":
            return {"ok": 1}
        if kind == "timer":
            ctx.timer_service.register_event_time_timer(ctx.timestamp)
        return [{"ok": self.n.value()}]

    def _late(self) -> Iterator[Record]:
        yield {"lost": 1}
        raise KeyError("late")

    def on_timer(self, timestamp: int, ctx: Context) -> None:
        raise RuntimeError(f"timer {timestamp}")


def test_user_errors_are_errors_of_their_record_with_the_function_named() -> None:
    step = make(fn=Faulty())
    errors: Errors = []
    records = [{"card": "a", "kind": k} for k in ("raise", "raise_late", "not_dict", "dict", "fine")]
    records.append({"card": "a", "kind": "fine", "timestamp": "not a time"})
    out = step.process(records, errors)
    assert out == [{"ok": 1}, {"ok": 2}, {"ok": 5}]
    messages = [str(e) for _, e in errors]
    assert messages[0] == "function tests:Totals.process raised ValueError: bad amount"
    assert messages[1] == "function tests:Totals.process raised KeyError: 'late'"
    assert messages[2] == "function tests:Totals.process returned str 'text', not a dict record"
    assert "returned a dict" in messages[3]
    assert "field 'timestamp'" in messages[4]
    assert [r["kind"] for r, _ in errors] == ["raise", "raise_late", "not_dict", "dict", "fine"]
    assert all(isinstance(e, UserFunctionError) for _, e in errors[:4])
    step.process([{"card": "b", "kind": "timer", "timestamp": 7}], errors)
    assert step.on_end() == []
    ((record, error),) = step.take_errors()
    assert record == {"key": "b", "timer": 7, "time_domain": "event"}
    assert str(error) == "function tests:Totals.on_timer raised RuntimeError: timer 7"
    assert step.take_errors() == []


def test_a_restored_step_continues_as_if_uninterrupted() -> None:
    """Snapshot the store between any two batches, rebuild the step from the copy: same output."""
    batches = [
        [ev(0, "a", 1), ev(3, "b", 2)],
        [ev(50, "a", 3, "x"), ev(160, "c", 1)],  # b's timer (103) fires here
        [ev(170, "a", 4)],  # a's (150)
        [ev(400, "b", 5), ev(401, "c", 6)],
    ]

    def run(cut: int | None) -> list[Record]:
        store = MemoryStateStore()
        step = make(store)
        out: list[Record] = []
        for i, batch in enumerate(batches):
            if i == cut:
                store = MemoryStateStore.from_dict(dict(store.to_dict()))
                step = make(store)
            out += step.process(batch, [])
        return out + step.on_end()

    expected = run(None)
    assert [r.get("quiet_at") for r in expected if "quiet_at" in r] == [103, 150, 260, 270, 500, 501]
    for cut in range(1, len(batches)):
        assert run(cut) == expected, cut


def test_function_must_not_read_state_in_open() -> None:
    class Reads(KeyedProcessFunction):
        def open(self, ctx: RuntimeContext) -> None:
            ctx.value_state("x").value()

    with pytest.raises(
        UserFunctionError, match=r"tests:Totals\.open raised RuntimeError: keyed state is only"
    ):
        make(fn=Reads())


class Fields(Totals):
    """Emits what ``process`` sees of the reused context (and of a timer firing in between)."""

    def process(self, event: dict[str, Any], ctx: Context) -> Iterator[Record]:
        list(super().process(event, ctx))
        if event.get("later"):
            ctx.timer_service.register_processing_time_timer(10)
        yield {"key": ctx.key, "at": ctx.timestamp, "wm": ctx.watermark, "domain": ctx.time_domain}


def test_the_reused_context_is_set_per_event_and_reset_after_timers() -> None:
    """One context serves every call: after a timer fired within a batch (or from ``on_time``), the
    next event sees its own key and time, the watermark before it, and no time domain."""
    step = make(fn=Fields())
    out = step.process([ev(0, "a", later=1), ev(500, "b"), ev(501, "a")], [])
    events = [r for r in out if "quiet_at" not in r]
    fired = [r for r in out if "quiet_at" in r]
    assert events == [
        {"key": "a", "at": 0, "wm": -(2**63), "domain": None},
        {"key": "b", "at": 500, "wm": -1, "domain": None},  # a's timer at 100 fired before this
        {"key": "a", "at": 501, "wm": 499, "domain": None},
    ]
    assert [(r["card"], r["domain"]) for r in fired] == [("a", TimeDomain.EVENT_TIME)]
    fired = step.on_time(10)
    assert [(r["card"], r["domain"]) for r in fired] == [("a", TimeDomain.PROCESSING_TIME)]
    assert step.process([ev(600, "c")], []) == [{"key": "c", "at": 600, "wm": 500, "domain": None}]


def test_a_key_field_is_read_inline_with_the_same_keys_as_the_key_function() -> None:
    """``key_field`` (the graph passes it when the key is a bare field) gives what ``key_fn`` gives,
    a missing field included (the key ``None``)."""
    records = [ev(0, "a"), {"timestamp": 1, "amount": 2, "merchant": "m"}, ev(2, "a", 3)]
    by_fn, by_field = make(), make(key_field="card")
    out = by_field.process([dict(r) for r in records], [])
    assert [(r["card"], r["total"]) for r in out] == [("a", 1), (None, 2), ("a", 4)]
    assert out == by_fn.process([dict(r) for r in records], [])
    assert by_field.on_end() == by_fn.on_end()
    assert [r["card"] for r in by_field.on_end() + by_fn.on_end()] == []
