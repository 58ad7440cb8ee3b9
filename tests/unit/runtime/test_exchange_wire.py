"""The internal-topic message format (runtime/exchange/wire.py): round trips, and refusals of what
this version cannot read (a newer version, garbage, a malformed header)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heliosdb_streaming.runtime.eventtime import MAX_WATERMARK, MIN_WATERMARK
from heliosdb_streaming.runtime.exchange import wire

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
records = st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=4), max_size=5)


@given(
    attempt=st.integers(0, 2**31),
    origin=st.text(min_size=1, max_size=12),
    position=st.integers(1, 2**62),
    watermark=st.sampled_from([MIN_WATERMARK, MAX_WATERMARK, 0, 1_700_000_000_000]),
    batch=records,
)
def test_a_delivery_round_trips(
    attempt: int, origin: str, position: int, watermark: int, batch: list[dict[str, object]]
) -> None:
    message = wire.decode(wire.encode_delivery(attempt, origin, position, watermark, batch))
    assert message == wire.Message(
        wire.DELIVERY, attempt, origin, position, watermark=watermark, records=batch
    )
    assert not message.is_barrier


def test_a_barrier_round_trips_and_is_compact() -> None:
    value = wire.encode_barrier(3, "s0-p1", 17, 42)
    assert wire.decode(value) == wire.Message(wire.BARRIER, 3, "s0-p1", 17, checkpoint_id=42)
    assert wire.decode(value).is_barrier
    assert len(value) < 32


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "tombstone"),
        (b"{not json", "not JSON"),
        (b'{"a": 1}', "not an internal-topic message"),
        (orjson.dumps([2, 0, 1, "o", 1, 0, []]), "version 2"),
        (orjson.dumps([1, 0, "1", "o", 1, 0, []]), "malformed header"),
        (orjson.dumps([1, 0, 1, "o", 1, 0, {}]), "malformed message"),
        (orjson.dumps([1, 7, 1, "o", 1, 0]), "malformed message of kind 7"),
    ],
)
def test_what_it_cannot_read_is_refused_with_a_reason(value: bytes | None, says: str) -> None:
    with pytest.raises(wire.WireFormatError, match=says):
        wire.decode(value)


def test_a_delivery_carries_its_ingestion_time_and_one_without_it_still_decodes() -> None:
    value = wire.encode_delivery(2, "s0-p0", 5, 1_000, [{"a": 1}], ingest_ms=1_767_225_600_123.5)
    message = wire.decode(value)
    assert message.ingest_ms == 1_767_225_600_123.5 and message.records == [{"a": 1}]
    # written without one (a timer's output, or an engine from before the field): None
    assert wire.decode(wire.encode_delivery(2, "s0-p0", 6, 1_000, [])).ingest_ms is None
    assert len(orjson.loads(wire.encode_delivery(2, "s0-p0", 6, 1_000, []))) == 7
    with pytest.raises(wire.WireFormatError, match="ingestion time"):
        wire.decode(orjson.dumps([1, 0, 2, "s0-p0", 7, 1_000, [], "soon"]))


def test_a_task_mark_round_trips_and_a_malformed_one_is_refused() -> None:
    message = wire.decode(wire.encode_task_mark(4, "s0-p2", 9, 1_000, [[3, 7], [5, 1]]))
    assert (message.kind, message.watermark, message.requires) == (wire.TASK_MARK, 1_000, [[3, 7], [5, 1]])
    assert not message.is_barrier
    with pytest.raises(wire.WireFormatError, match="task mark"):
        wire.decode(orjson.dumps([1, 2, 4, "s0-p2", 9, 1_000, [[3, "7"]]]))
