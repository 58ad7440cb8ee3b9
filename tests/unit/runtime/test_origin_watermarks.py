"""A downstream task's watermark (runtime/exchange/base.py OriginWatermarks): the minimum over its
origins, an origin silent for idle_timeout left out, a finished origin never holding it back, and it
never goes back; checked against a direct computation of that rule on random histories."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK
from heliosdb_streaming.runtime.exchange.base import OriginWatermarks


def test_an_origin_not_heard_from_holds_the_watermark_until_it_is_idle() -> None:
    marks = OriginWatermarks(["a", "b"], idle_timeout_s=30, now=0.0)
    marks.update("a", 1000, now=1.0)
    assert marks.current(now=1.0) == MIN_WATERMARK
    assert marks.current(now=29.0) == MIN_WATERMARK
    assert marks.current(now=30.5) == 1000  # b idle since 0.0; a active since 1.0


def test_the_minimum_over_active_origins_and_finished_ones_count_as_done() -> None:
    marks = OriginWatermarks(["a", "b"], idle_timeout_s=30, now=0.0)
    marks.update("a", 1000, now=1.0)
    marks.update("b", 500, now=1.0)
    assert marks.current(now=1.0) == 500
    marks.update("b", MAX_WATERMARK, now=2.0)
    assert marks.current(now=2.0) == 1000
    assert marks.current(now=100.0) == 1000  # a idle, b finished: a's mark, not the end of time
    marks.update("a", MAX_WATERMARK, now=101.0)
    assert marks.current(now=101.0) == MAX_WATERMARK


def test_it_never_goes_back_when_an_idle_origin_returns() -> None:
    marks = OriginWatermarks(["a", "b"], idle_timeout_s=10, now=0.0)
    marks.update("a", 5000, now=20.0)
    assert marks.current(now=20.0) == 5000
    marks.update("b", 100, now=21.0)
    assert marks.current(now=21.0) == 5000


def test_a_snapshot_restores_marks_and_watermark() -> None:
    marks = OriginWatermarks(["a", "b"], idle_timeout_s=10, now=0.0)
    marks.update("a", 700, now=1.0)
    marks.update("b", 900, now=1.0)
    assert marks.current(now=1.0) == 700
    again = OriginWatermarks(["a", "b"], idle_timeout_s=10, now=50.0)
    again.restore(marks.snapshot(), now=50.0)
    assert again.current(now=50.0) == 700
    assert again.current(now=70.0) == 900


events = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(-100, 100), st.integers(0, 5)), max_size=40
)


@given(events, st.integers(1, 10))
def test_equals_the_rule_computed_directly(history: list[tuple[str, int, int]], idle: int) -> None:
    origins = ["a", "b", "c"]
    marks = OriginWatermarks(origins, idle_timeout_s=idle, now=0.0)
    best = {o: MIN_WATERMARK for o in origins}
    last = dict.fromkeys(origins, 0.0)
    now = 0.0
    reported = MIN_WATERMARK
    for origin, watermark, pause in history:
        now += pause
        marks.update(origin, watermark, now)
        best[origin] = max(best[origin], watermark)
        last[origin] = now
        active = [best[o] for o in origins if now - last[o] < idle]
        expected = min(active) if active else max(best.values())
        reported = max(reported, expected)
        assert marks.current(now) == reported
