from __future__ import annotations

import copy
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heliosdb_streaming.model.transformations import parse_aggregate
from heliosdb_streaming.runtime.contracts import Record
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.transformations.window import WindowTransformation

Errors = list[tuple[Record, Exception]]

AGGS: dict[str, tuple[str, str | None]] = {
    "n": ("count", None),
    "total": ("sum", "amount"),
}


def make(store: MemoryStateStore | None = None, **kw: Any) -> WindowTransformation:
    params: dict[str, Any] = {
        "kind": "tumbling",
        "size_ms": 10,
        "key_fn": lambda r: r["k"],
        "aggregates": AGGS,
    }
    params.update(kw)
    return WindowTransformation(store if store is not None else MemoryStateStore(), **params)


def ev(ts: Any, amount: Any = 1, k: Any = "a", **extra: Any) -> Record:
    return {"timestamp": ts, "amount": amount, "k": k, **extra}


def win(k: Any, start: int, end: int, **aggs: Any) -> Record:
    return {"key": k, "window_start": start, "window_end": end, **aggs}


def feed(w: WindowTransformation, records: list[Record], errors: Errors | None = None) -> list[Record]:
    return w.process(records, errors if errors is not None else [])


# ---------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("count(*)", ("count", None)),
        ("COUNT( * )", ("count", None)),
        ("count(user)", ("count", "user")),
        ("sum(amount)", ("sum", "amount")),
        (" avg(payload.x) ", ("avg", "payload.x")),
        ("min(a_b1)", ("min", "a_b1")),
        ("Max(x)", ("max", "x")),
    ],
)
def test_parse_aggregate(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_aggregate(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("median(x)", "unknown aggregate function"),
        ("sum(*)", "only allowed in count"),
        ("sum()", "missing field"),
        ("sum(a b)", "invalid field"),
        ("sum(a.)", "invalid field"),
        ("sum(1x)", "invalid field"),
        ("sum amount", "expected function(field)"),
        ("", "expected function(field)"),
        ("sum(amount", "expected function(field)"),
    ],
)
def test_parse_aggregate_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_aggregate(text)


@pytest.mark.parametrize(
    "kw",
    [
        {"kind": "hopping"},
        {"kind": "tumbling", "size_ms": None},
        {"kind": "tumbling", "size_ms": 0},
        {"kind": "sliding", "size_ms": 10, "slide_ms": None},
        {"kind": "session", "gap_ms": None},
        {"time": "ingestion"},
        {"allowed_lateness_ms": -1},
        {"aggregates": {"x": ("median", "a")}},
        {"aggregates": {"x": ("sum", None)}},
    ],
)
def test_constructor_rejects(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(**kw)


# ---------------------------------------------------------------------------------------- tumbling


def test_tumbling_fires_when_watermark_reaches_end_minus_one() -> None:
    w = make()
    assert feed(w, [ev(1), ev(5, 2), ev(8, 3)]) == []
    # watermark 9 == end - 1 of [0, 10): fires within the same call, after adding the event
    assert feed(w, [ev(9, 4), ev(10, 5)]) == [win("a", 0, 10, n=4, total=10)]
    assert w.on_end() == [win("a", 10, 20, n=1, total=5)]
    assert w.on_end() == []


def test_tumbling_keys_and_output_order() -> None:
    w = make()
    out = feed(w, [ev(3, k="b"), ev(1, k="a"), ev(12, k="c"), ev(15, k="a"), ev(25, k="z")])
    assert out == [
        win("a", 0, 10, n=1, total=1),
        win("b", 0, 10, n=1, total=1),
        win("a", 10, 20, n=1, total=1),
        win("c", 10, 20, n=1, total=1),
    ]
    assert w.on_end() == [win("z", 20, 30, n=1, total=1)]


def test_global_key_and_epoch_alignment() -> None:
    w = make(key_fn=None, size_ms=1000)
    feed(w, [ev(1_761_732_000_123), ev(1_761_732_000_998)])
    assert w.on_end() == [win(None, 1_761_732_000_000, 1_761_732_001_000, n=2, total=2)]


def test_negative_timestamps_align_down() -> None:
    w = make(max_out_of_orderness_ms=100)
    feed(w, [ev(-1), ev(-10), ev(-11)])
    assert w.on_end() == [win("a", -20, -10, n=1, total=1), win("a", -10, 0, n=2, total=2)]


def test_out_of_orderness_delays_firing() -> None:
    w = make(max_out_of_orderness_ms=5)
    assert feed(w, [ev(1), ev(12)]) == []  # watermark 12 - 5 - 1 = 6
    assert w.watermark == 6
    assert feed(w, [ev(4)]) == []  # not late: window [0,10) has not fired
    assert feed(w, [ev(14)]) == []  # watermark 8
    assert feed(w, [ev(15)]) == [win("a", 0, 10, n=2, total=2)]  # watermark 9 = end - 1


def test_in_order_events_at_the_largest_time_are_not_late() -> None:
    """The watermark trails the largest time by 1 ms (Flink's bounded out-of-orderness), so every
    event at 9999 counts, whichever key comes first: the window fires on the first later time."""
    w = make(size_ms=10_000)
    assert feed(w, [ev(9999), ev(9999, k="b"), ev(9999)]) == []
    assert feed(w, [ev(15_000)]) == [win("a", 0, 10_000, n=2, total=2), win("b", 0, 10_000, n=1, total=1)]
    assert w.late_dropped == 0


def test_late_event_dropped_and_counted() -> None:
    w = make()
    assert feed(w, [ev(1), ev(15)]) == [win("a", 0, 10, n=1, total=1)]
    errors: Errors = []
    assert feed(w, [ev(3), ev(9), ev(16)], errors) == []
    assert w.late_dropped == 2
    assert errors == []
    assert w.on_end() == [win("a", 10, 20, n=2, total=2)]


def test_allowed_lateness_refires_then_drops() -> None:
    w = make(allowed_lateness_ms=10)
    assert feed(w, [ev(1), ev(5, 2), ev(12)]) == [win("a", 0, 10, n=2, total=3)]  # watermark 11
    # late but within lateness (watermark 11 < 9 + 10): updates the window and fires again at once
    assert feed(w, [ev(3, 4)]) == [win("a", 0, 10, n=3, total=7)]
    assert w.late_dropped == 0
    # watermark 17: [0,10) still kept; a late event for a window nobody saw yet fires immediately too
    assert feed(w, [ev(18), ev(2, 1, k="new")]) == [win("new", 0, 10, n=1, total=1)]
    assert feed(w, [ev(19)]) == []  # watermark 18: [10,20) is not due yet
    # watermark 19 = 9 + 10: state of [0,10) is gone, [10,20) fires
    assert feed(w, [ev(20)]) == [win("a", 10, 20, n=3, total=3)]
    assert feed(w, [ev(4, 100), ev(4, 100, k="new")]) == []
    assert w.late_dropped == 2
    assert feed(w, [ev(11, 5)]) == [win("a", 10, 20, n=4, total=8)]
    assert w.on_end() == [win("a", 20, 30, n=1, total=1)]


# ---------------------------------------------------------------------------------------- sliding


def test_sliding_windows() -> None:
    w = make(kind="sliding", size_ms=10, slide_ms=5)
    out = feed(w, [ev(7), ev(12, 2)])  # watermark 12 >= 9: [0,10) fires
    assert out == [win("a", 0, 10, n=1, total=1)]
    assert w.on_end() == [
        win("a", 5, 15, n=2, total=3),
        win("a", 10, 20, n=1, total=2),
    ]


def test_sliding_late_dropped_only_when_all_windows_are_late() -> None:
    w = make(kind="sliding", size_ms=10, slide_ms=5)
    out = feed(w, [ev(0), ev(13)])  # fires [-5,5) and [0,10)
    assert [(r["window_start"], r["window_end"]) for r in out] == [(-5, 5), (0, 10)]
    feed(w, [ev(6)])  # [0,10) is gone, [5,15) still open: not dropped
    assert w.late_dropped == 0
    feed(w, [ev(3)])  # [-5,5) and [0,10) both gone
    assert w.late_dropped == 1
    assert w.on_end() == [win("a", 5, 15, n=2, total=2), win("a", 10, 20, n=1, total=1)]


def test_sliding_with_gaps_between_windows() -> None:
    w = make(kind="sliding", size_ms=5, slide_ms=10)
    assert feed(w, [ev(3), ev(7), ev(12)]) == [win("a", 0, 5, n=1, total=1)]
    assert w.on_end() == [win("a", 10, 15, n=1, total=1)]
    assert w.late_dropped == 0


# ---------------------------------------------------------------------------------------- session


def test_session_windows_extend_and_fire() -> None:
    w = make(kind="session", size_ms=None, gap_ms=10)
    assert feed(w, [ev(0), ev(5, 2), ev(3, 4, k="b")]) == []
    # 30 - 15 >= gap: [0,15) fires (watermark 30 >= 14) and b's [3,13) too
    assert feed(w, [ev(30)]) == [win("b", 3, 13, n=1, total=4), win("a", 0, 15, n=2, total=3)]
    assert w.on_end() == [win("a", 30, 40, n=1, total=1)]


def test_session_merges_windows_bridged_by_an_event() -> None:
    w = make(kind="session", size_ms=None, gap_ms=10, max_out_of_orderness_ms=100)
    feed(w, [ev(0), ev(25, 2), ev(50, 100)])
    feed(w, [ev(12, 4)])  # [12,22) touches nothing: [0,10) ends at 10 < 12, [25,35) starts at 25 > 22
    assert w.on_end() == [
        win("a", 0, 10, n=1, total=1),
        win("a", 12, 22, n=1, total=4),
        win("a", 25, 35, n=1, total=2),
        win("a", 50, 60, n=1, total=100),
    ]
    w = make(kind="session", size_ms=None, gap_ms=10, max_out_of_orderness_ms=100)
    feed(w, [ev(0), ev(20, 2), ev(50, 100)])
    feed(w, [ev(10, 4)])  # [10,20) touches [0,10) and [20,30): one session
    assert w.on_end() == [win("a", 0, 30, n=3, total=7), win("a", 50, 60, n=1, total=100)]


def test_session_late_merge_refires_merged_window() -> None:
    w = make(kind="session", size_ms=None, gap_ms=10, allowed_lateness_ms=100)
    assert feed(w, [ev(0), ev(25, 2)]) == [win("a", 0, 10, n=1, total=1)]
    assert feed(w, [ev(45, 3)]) == [win("a", 25, 35, n=1, total=2)]
    # watermark 45: 8 is late but within lateness and bridges nothing new -> [0,18) fires at once
    assert feed(w, [ev(8, 4)]) == [win("a", 0, 18, n=2, total=5)]
    # 17 bridges [0,18) and [25,35): merged [0,35) is due, fires once
    assert feed(w, [ev(17, 5)]) == [win("a", 0, 35, n=4, total=12)]
    assert w.late_dropped == 0
    assert feed(w, [ev(2, 5)]) == [win("a", 0, 35, n=5, total=17)]
    assert w.on_end() == [win("a", 45, 55, n=1, total=3)]


# ---------------------------------------------------------------------------------------- processing time


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_processing_time_tumbling() -> None:
    clock = FakeClock(1003)
    w = make(time="processing", now_ms=clock, allowed_lateness_ms=50)
    assert feed(w, [ev("not a time"), ev(None, 2)]) == []  # the time field is not used
    clock.now = 1012
    assert feed(w, [ev(0, 4)]) == []
    assert w.on_time(1008) == []
    assert w.on_time(1009) == [win("a", 1000, 1010, n=2, total=3)]
    assert w.on_time(1009) == []
    clock.now = 1015
    assert feed(w, [ev(0, 1)]) == []
    assert w.on_time(1025) == [win("a", 1010, 1020, n=2, total=5)]
    assert w.late_dropped == 0
    clock.now = 1031
    feed(w, [ev(0, 7)])
    assert w.on_end() == [win("a", 1030, 1040, n=1, total=7)]


def test_processing_time_session() -> None:
    clock = FakeClock(100)
    w = make(kind="session", size_ms=None, gap_ms=10, time="processing", now_ms=clock)
    feed(w, [ev(0)])
    clock.now = 105
    feed(w, [ev(0, 2), ev(0, 1, k="b")])
    assert w.on_time(110) == []
    assert w.on_time(114) == []  # an event at 115 would still extend both sessions
    assert w.on_time(115) == [win("a", 100, 115, n=2, total=3), win("b", 105, 115, n=1, total=1)]
    clock.now = 200
    feed(w, [ev(0, 5)])
    assert w.on_end() == [win("a", 200, 210, n=1, total=5)]


def test_event_time_on_time_does_nothing() -> None:
    w = make()
    feed(w, [ev(1)])
    assert w.on_time(10**15) == []


# ---------------------------------------------------------------------------------------- aggregates


def test_aggregates_with_nulls_nested_fields_and_errors() -> None:
    aggs = {
        "n": parse_aggregate("count(*)"),
        "n_amount": parse_aggregate("count(amount)"),
        "total": parse_aggregate("sum(amount)"),
        "mean": parse_aggregate("avg(amount)"),
        "lo": parse_aggregate("min(amount)"),
        "hi": parse_aggregate("max(amount)"),
        "deep": parse_aggregate("sum(payload.x)"),
        "nothing": parse_aggregate("avg(missing)"),
        "nothing_sum": parse_aggregate("sum(missing)"),
        "nothing_min": parse_aggregate("min(missing)"),
    }
    w = make(aggregates=aggs)
    errors: Errors = []
    records = [
        ev(1, 4, payload={"x": 1.5}),
        ev(2, None, payload={"x": 2}),
        ev(3, -2),
        {"timestamp": 4, "k": "a", "payload": 7},  # amount missing, payload not an object
        ev(5, "12"),  # not a number: error, record skipped entirely
        ev(6, True),
        ev(7, 3, payload={"x": "bad"}),
        {"amount": 1, "k": "a"},  # no time
        ev("yesterday", 1),
        ev(8, 1, k=None) | {"k": None},
    ]
    out = w.process(records, errors)
    assert out == []
    assert [r for r, _ in errors] == [records[4], records[5], records[6], records[7], records[8]]
    assert all(isinstance(e, TypeError | ValueError) for _, e in errors)
    assert "amount" in str(errors[0][1])
    assert "timestamp" in str(errors[3][1])
    assert w.on_end() == [
        win(
            "a",
            0,
            10,
            n=4,
            n_amount=2,
            total=2,
            mean=1.0,
            lo=-2,
            hi=4,
            deep=3.5,
            nothing=None,
            nothing_sum=None,
            nothing_min=None,
        ),
        win(
            None,
            0,
            10,
            n=1,
            n_amount=1,
            total=1,
            mean=1.0,
            lo=1,
            hi=1,
            deep=None,
            nothing=None,
            nothing_sum=None,
            nothing_min=None,
        ),
    ]


def test_key_fn_errors_are_reported() -> None:
    w = make(key_fn=lambda r: r["user"])
    errors: Errors = []
    records = [ev(1), ev(2) | {"user": "u"}]
    feed(w, records, errors)
    assert len(errors) == 1 and errors[0][0] is records[0] and isinstance(errors[0][1], KeyError)
    assert w.on_end() == [win("u", 0, 10, n=1, total=1)]


def test_iso_timestamps() -> None:
    w = make(size_ms=60_000)
    feed(w, [ev("2025-10-29T10:00:05Z"), ev("2025-10-29T12:00:30+02:00", 2)])
    assert w.on_end() == [win("a", 1_761_732_000_000, 1_761_732_060_000, n=2, total=3)]


# ---------------------------------------------------------------------------------------- state


def test_state_lives_in_the_store_and_is_json() -> None:
    store = MemoryStateStore()
    w = make(store, allowed_lateness_ms=5, key_fn=lambda r: (r["k"], 1))
    feed(w, [ev(1), ev(3, k="b"), ev(12)])
    data = dict(store.items())
    assert json.loads(json.dumps(data)) == json.loads(json.dumps(data))
    assert set(data) == {
        "meta",
        "w|0|10|('a', 1)",
        "w|0|10|('b', 1)",
        "w|10|20|('a', 1)",
    }
    w.on_end()
    assert list(store.items("w|")) == []


def _snapshot(store: MemoryStateStore) -> MemoryStateStore:
    """A checkpoint round trip: JSON-serialized, so tuples become lists etc."""
    restored = MemoryStateStore()
    for k, v in store.items():
        restored.put(k, json.loads(json.dumps(v)))
    return restored


def _split_run(
    factory: Callable[[MemoryStateStore], WindowTransformation],
    batches: list[list[Record]],
    cut: int,
    on_time: list[int] | None = None,
) -> tuple[list[Any], list[Any], WindowTransformation, WindowTransformation]:
    def step(w: WindowTransformation, i: int) -> list[Any]:
        out = [feed(w, copy.deepcopy(batches[i]))]
        if on_time:
            out.append(w.on_time(on_time[i]))
        return out

    straight = factory(MemoryStateStore())
    expected = [step(straight, i) for i in range(len(batches))] + [straight.on_end()]

    first_store = MemoryStateStore()
    first = factory(first_store)
    got = [step(first, i) for i in range(cut)]
    snap = _snapshot(first_store)
    # the original keeps going after the snapshot without disturbing it
    for i in range(cut, len(batches)):
        step(first, i)
    second = factory(MemoryStateStore())
    second._store = snap
    second.restore()
    got += [step(second, i) for i in range(cut, len(batches))] + [second.on_end()]
    return expected, got, straight, second


@pytest.mark.parametrize(
    "kw",
    [
        {"kind": "tumbling", "size_ms": 10, "allowed_lateness_ms": 7, "max_out_of_orderness_ms": 3},
        {"kind": "sliding", "size_ms": 10, "slide_ms": 3, "allowed_lateness_ms": 4},
        {"kind": "session", "size_ms": None, "gap_ms": 6, "allowed_lateness_ms": 5},
        {"kind": "session", "size_ms": None, "gap_ms": 6, "max_out_of_orderness_ms": 8},
    ],
)
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_restore_continues_identically(kw: dict[str, Any], cut: int) -> None:
    batches = [
        [ev(1, 1), ev(4, 2, k="b"), ev(9, 3), ev(2, 4)],
        [ev(15, 5), ev(3, 6), ev(11, 7, k="b"), ev(22, 8)],
        [ev(18, 9), ev(6, 10), ev(30, 11, k="b"), ev(12, 12)],
        [ev(41, 13), ev(25, 14), ev(40, 15, k="b"), ev(33, 16)],
    ]

    def factory(store: MemoryStateStore) -> WindowTransformation:
        return make(store, **kw)

    expected, got, straight, second = _split_run(factory, batches, cut)
    assert got == expected
    assert second.late_dropped == straight.late_dropped
    assert any(expected)


def test_restore_processing_time() -> None:
    batches = [[ev(0, 1)], [ev(0, 2), ev(0, 3, k="b")], [ev(0, 4)], [ev(0, 5)]]
    arrivals = [100, 104, 109, 113]  # the clock when each batch is processed
    timers = [101, 106, 111, 116]  # the clock of the on_time call after it

    def factory(store: MemoryStateStore, clock: FakeClock) -> WindowTransformation:
        return make(store, kind="sliding", slide_ms=5, time="processing", now_ms=clock)

    def step(w: WindowTransformation, clock: FakeClock, i: int) -> tuple[list[Record], list[Record]]:
        clock.now = arrivals[i]
        return feed(w, batches[i]), w.on_time(timers[i])

    clock = FakeClock(0)
    straight = factory(MemoryStateStore(), clock)
    expected = [step(straight, clock, i) for i in range(4)] + [(straight.on_end(), [])]
    first_store = MemoryStateStore()
    first = factory(first_store, clock)
    got = [step(first, clock, i) for i in range(2)]
    second = factory(_snapshot(first_store), clock)  # a store with content: the constructor restores
    got += [step(second, clock, i) for i in range(2, 4)] + [(second.on_end(), [])]
    assert got == expected
    assert any(out for out, _ in expected)


# ---------------------------------------------------------------------------------------- property test


def _reference(
    events: list[tuple[str, int, int | None]], size: int, slide: int, ooo: int, lateness: int
) -> tuple[dict[tuple[str, int], Record], Counter[tuple[str, int]], int]:
    """Brute force: per-record watermark, every window checked on its own."""
    wm = -(2**63)
    values: dict[tuple[str, int], list[int | None]] = defaultdict(list)
    due_arrivals: Counter[tuple[str, int]] = Counter()
    fresh: set[tuple[str, int]] = set()
    dropped = 0
    for key, ts, v in events:
        starts = [s for s in range(ts - size - slide, ts + 1) if s % slide == 0 and s <= ts < s + size]
        accepted = rejected = 0
        for s in starts:
            end = s + size
            if end - 1 + lateness <= wm:
                rejected += 1
                continue
            accepted += 1
            values[(key, s)].append(v)
            if end - 1 <= wm:
                due_arrivals[(key, s)] += 1
            else:
                fresh.add((key, s))
        if rejected and not accepted:
            dropped += 1
        wm = max(wm, ts - ooo - 1)
    final: dict[tuple[str, int], Record] = {}
    emissions: Counter[tuple[str, int]] = Counter()
    for (key, s), vs in values.items():
        nums = [x for x in vs if x is not None]
        final[(key, s)] = win(
            key,
            s,
            s + size,
            n=len(vs),
            total=sum(nums) if nums else None,
            mean=sum(nums) / len(nums) if nums else None,
            lo=min(nums) if nums else None,
            hi=max(nums) if nums else None,
        )
        emissions[(key, s)] = due_arrivals[(key, s)] + (1 if (key, s) in fresh else 0)
    return final, emissions, dropped


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.integers(min_value=-20, max_value=120),
            st.one_of(st.none(), st.integers(min_value=-50, max_value=50)),
        ),
        max_size=60,
    ),
    sliding=st.booleans(),
    size=st.integers(min_value=1, max_value=25),
    slide=st.integers(min_value=1, max_value=25),
    ooo=st.integers(min_value=0, max_value=30),
    lateness=st.integers(min_value=0, max_value=30),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6),
)
def test_tumbling_and_sliding_match_reference(
    events: list[tuple[str, int, int | None]],
    sliding: bool,
    size: int,
    slide: int,
    ooo: int,
    lateness: int,
    cuts: list[int],
) -> None:
    if not sliding:
        slide = size
    aggs = {
        "n": parse_aggregate("count(*)"),
        "total": parse_aggregate("sum(v)"),
        "mean": parse_aggregate("avg(v)"),
        "lo": parse_aggregate("min(v)"),
        "hi": parse_aggregate("max(v)"),
    }
    w = WindowTransformation(
        MemoryStateStore(),
        kind="sliding" if sliding else "tumbling",
        size_ms=size,
        slide_ms=slide if sliding else None,
        gap_ms=None,
        time="event",
        allowed_lateness_ms=lateness,
        max_out_of_orderness_ms=ooo,
        key_fn=lambda r: r["k"],
        aggregates=aggs,
    )
    records = [{"k": k, "timestamp": ts, "v": v} for k, ts, v in events]
    bounds = sorted({0, len(records), *(c for c in cuts if c <= len(records))})
    out: list[Record] = []
    errors: Errors = []
    for lo, hi in itertools.pairwise(bounds):
        out += w.process(records[lo:hi], errors)
    out += w.on_end()
    assert errors == []
    final, emissions, dropped = _reference(events, size, slide, ooo, lateness)
    got_last: dict[tuple[str, int], Record] = {}
    got_count: Counter[tuple[str, int]] = Counter()
    for r in out:
        got_last[(r["key"], r["window_start"])] = r
        got_count[(r["key"], r["window_start"])] += 1
    assert got_last == final
    assert got_count == emissions
    assert w.late_dropped == dropped


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(min_value=0, max_value=100)),
        max_size=40,
    ),
    gap=st.integers(min_value=1, max_value=15),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=5),
)
def test_sessions_match_reference(events: list[tuple[str, int]], gap: int, cuts: list[int]) -> None:
    """Any arrival order, nothing due before the end: on_end gives the sessions of the sorted events."""
    w = make(kind="session", size_ms=None, gap_ms=gap, max_out_of_orderness_ms=10_000)
    records = [ev(ts, 1, k=k) for k, ts in events]
    bounds = sorted({0, len(records), *(c for c in cuts if c <= len(records))})
    for lo, hi in itertools.pairwise(bounds):
        assert feed(w, records[lo:hi]) == []
    expected = []
    for key in ("a", "b"):
        times = sorted(ts for k, ts in events if k == key)
        sessions: list[list[int]] = []
        for ts in times:
            if sessions and ts <= sessions[-1][-1] + gap:  # touching [ts, ts+gap) merges too
                sessions[-1].append(ts)
            else:
                sessions.append([ts])
        expected += [win(key, s[0], s[-1] + gap, n=len(s), total=len(s)) for s in sessions]
    expected.sort(key=lambda r: (r["window_end"], r["window_start"], repr(r["key"])))
    assert w.on_end() == expected


def _brute_force_windows(
    events: list[tuple[str, int, int]], kind: str, size: int, slide: int, gap: int
) -> list[Record]:
    """Every window of every key with its count and sum, straight from the definition."""
    groups: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    if kind == "session":
        by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for k, ts, v in events:
            by_key[k].append((ts, v))
        for k, items in by_key.items():
            items.sort()
            start, last, values = items[0][0], items[0][0], [items[0][1]]
            for ts, v in items[1:]:
                if ts - last > gap:  # touching sessions ([s, last+gap) and [last+gap, ...)) merge
                    groups[(k, start, last + gap)] = values
                    start, values = ts, []
                last = ts
                values.append(v)
            groups[(k, start, last + gap)] = values
    else:
        for k, ts, v in events:
            start = ts - ts % slide
            while start > ts - size:
                groups[(k, start, start + size)].append(v)
                start -= slide
    return sorted(
        (win(k, s, e, n=len(vs), total=sum(vs)) for (k, s, e), vs in groups.items()),
        key=lambda r: (r["key"], r["window_start"], r["window_end"]),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    times=st.lists(st.integers(min_value=0, max_value=200), max_size=60),
    keys=st.lists(st.sampled_from(["a", "b", "c"]), min_size=60, max_size=60),
    kind=st.sampled_from(["tumbling", "sliding", "session"]),
    size=st.integers(min_value=1, max_value=25),
    slide=st.integers(min_value=1, max_value=25),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6),
)
def test_in_order_input_loses_nothing(
    times: list[int], keys: list[str], kind: str, size: int, slide: int, cuts: list[int]
) -> None:
    """Input in time order (ties in any key order, cut into any batches) is never late: every
    window equals the brute-force one and fires exactly once, whatever the window kind."""
    events = [(keys[i], ts, i) for i, ts in enumerate(sorted(times))]
    slide = min(slide, size)
    params: dict[str, Any] = {"kind": kind}
    if kind == "session":
        params.update(size_ms=None, gap_ms=size)
    else:
        params.update(size_ms=size, slide_ms=slide if kind == "sliding" else None)
    w = make(**params)
    records = [ev(ts, v, k=k) for k, ts, v in events]
    out: list[Record] = []
    for lo, hi in itertools.pairwise([0, *sorted(set(cuts)), len(records)]):
        out.extend(feed(w, records[lo:hi]))
    out.extend(w.on_end())
    assert w.late_dropped == 0
    got = sorted(out, key=lambda r: (r["key"], r["window_start"], r["window_end"]))
    expected = _brute_force_windows(events, kind, size, slide if kind == "sliding" else size, size)
    assert got == expected
