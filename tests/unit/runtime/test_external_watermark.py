"""Window and CEP steps of a later stage (external-watermark mode): fed by several origins whose
events interleave arbitrarily but are in event-time order per origin, with the watermark the
minimum over the origins (Router + OriginWatermarks, as the stage runner does), they lose nothing
and give what one step seeing every event in event-time order gives."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from heliosdb_streaming.model.patterns import parse_pattern
from heliosdb_streaming.runtime.contracts import Batch, Record
from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK
from heliosdb_streaming.runtime.exchange.base import OriginWatermarks
from heliosdb_streaming.runtime.exchange.router import Router
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.transformations.cep import CepTransformation
from heliosdb_streaming.runtime.transformations.window import WindowTransformation

Errors = list[tuple[Record, Exception]]


def key_fn(r: Record) -> Any:
    return r["k"]


def window(store: MemoryStateStore, external: bool = True) -> WindowTransformation:
    return WindowTransformation(
        store,
        kind="tumbling",
        size_ms=100,
        key_fn=key_fn,
        aggregates={"n": ("count", None)},
        external_watermark=external,
    )


def cep(store: MemoryStateStore, external: bool = True) -> CepTransformation:
    return CepTransformation(
        store,
        pattern=parse_pattern("A B"),
        pattern_text="A B",
        define={"A": lambda r: r["v"] == 0, "B": lambda r: r["v"] == 1},
        key_fn=key_fn,
        window_ms=50,
        external_watermark=external,
    )


def feed(step: Any, origins: dict[str, list[Record]], lag: int, seed: int) -> Batch:
    """Interleaves the origins' events at random (each origin's in its order), in small batches,
    each followed by the stage's watermark, then finishes every origin."""
    rng = random.Random(seed)
    router = Router(None, 1, "t", lag)
    marks = OriginWatermarks(list(origins), idle_timeout_s=1e9, now=0.0)
    cursors = dict.fromkeys(origins, 0)
    out: Batch = []
    errors: Errors = []
    while any(cursors[o] < len(origins[o]) for o in origins):
        origin = rng.choice([o for o in origins if cursors[o] < len(origins[o])])
        n = rng.randint(1, 4)
        records = origins[origin][cursors[origin] : cursors[origin] + n]
        cursors[origin] += n
        _, watermark = router.route(origin, records, errors)
        out += step.process(records, errors)
        marks.update(origin, watermark, 0.0)
        out += step.advance_watermark(marks.current(0.0), errors)
    for origin in origins:
        marks.update(origin, MAX_WATERMARK, 0.0)
    out += step.advance_watermark(marks.current(0.0), errors)
    out += step.on_end()
    assert not errors
    return out


streams = st.lists(
    st.lists(st.tuples(st.integers(0, 30), st.sampled_from("xy"), st.integers(0, 1)), max_size=25),
    min_size=1,
    max_size=4,
)


def origins_of(raw: list[list[tuple[int, str, int]]]) -> dict[str, list[Record]]:
    """Per origin: events in event-time order (increments, so ties happen)."""
    out: dict[str, list[Record]] = {}
    for i, events in enumerate(raw):
        t = 0
        out[f"o{i}"] = []
        for step, k, v in events:
            t += step
            out[f"o{i}"].append({"t": t, "k": k, "v": v, "timestamp": t})
    return out


@settings(max_examples=150, deadline=None)
@given(streams, st.integers(0, 2**16))
def test_a_window_loses_nothing_and_counts_every_event_once(raw: list[Any], seed: int) -> None:
    origins = origins_of(raw)
    step = window(MemoryStateStore())
    step.time_field = "t"
    out = feed(step, origins, lag=1, seed=seed)
    expected = Counter((e["k"], e["t"] - e["t"] % 100) for events in origins.values() for e in events)
    found = Counter({(r["key"], r["window_start"]): r["n"] for r in out})
    assert len(out) == len(found)  # one firing per (key, window)
    assert found == expected
    assert step.late_dropped == 0


@settings(max_examples=150, deadline=None)
@given(streams, st.integers(0, 2**16))
def test_cep_matches_as_one_step_over_all_events_in_time_order(raw: list[Any], seed: int) -> None:
    origins = origins_of(raw)
    # one order for ties: the oracle and the stage both take events of equal time in arrival
    # order, which differs; make times distinct across origins
    n = len(origins)
    for i, events in enumerate(origins.values()):
        for e in events:
            e["t"] = e["t"] * n * 2 + i
            e["timestamp"] = e["t"]
    step = cep(MemoryStateStore())
    step.time_field = "t"
    found = feed(step, origins, lag=1, seed=seed)
    oracle = cep(MemoryStateStore(), external=False)
    oracle.time_field = "t"
    everything = sorted((e for events in origins.values() for e in events), key=lambda e: e["t"])
    expected = oracle.process(everything, []) + oracle.on_end()
    assert sorted(map(_match, found)) == sorted(map(_match, expected))
    assert step.late_dropped == 0


def _match(r: Record) -> tuple[Any, ...]:
    return (r["key"], r["start_time"], r["end_time"], r["event_count"])


def test_cep_buffers_until_the_watermark_and_survives_a_restore() -> None:
    store = MemoryStateStore()
    step = cep(store)
    step.time_field = "t"
    errors: Errors = []
    assert step.process([{"t": 10, "k": "x", "v": 1}, {"t": 5, "k": "x", "v": 0}], errors) == []
    restored = cep(MemoryStateStore.from_dict(store.to_dict()))
    restored.time_field = "t"
    out = restored.advance_watermark(10, errors)  # released in event-time order: A@5 then B@10
    assert [(r["start_time"], r["end_time"]) for r in out] == [(5, 10)]
    assert restored.process([{"t": 9, "k": "x", "v": 0}], errors) == []  # behind the watermark
    assert restored.late_dropped == 1
    assert not errors


def test_a_window_in_external_mode_ignores_its_own_events_for_event_time() -> None:
    step = window(MemoryStateStore())
    step.time_field = "t"
    errors: Errors = []
    assert step.process([{"t": 5, "k": "x"}, {"t": 250, "k": "x"}], errors) == []
    assert step.watermark < 0  # an internal step would have fired [0, 100) already
    assert step.process([{"t": 7, "k": "x"}], errors) == []  # not late: the stage says so
    assert [(r["window_start"], r["n"]) for r in step.advance_watermark(150, errors)] == [(0, 2)]
    assert step.process([{"t": 8, "k": "x"}], errors) == []
    assert step.late_dropped == 1
