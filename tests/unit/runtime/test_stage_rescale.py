"""Restoring a key-group task from snapshots taken at another parallelism (``stages.merge_positions``)
and sealing one task's exactly-once output at its own barrier alignment (``OutputStaging.seal_task``)."""

from __future__ import annotations

from typing import Any

import pytest

from heliosdb_streaming.runtime.checkpoint.tasks import OutputStaging
from heliosdb_streaming.runtime.eventtime import MIN_WATERMARK
from heliosdb_streaming.runtime.stages import merge_positions, parse_stage_task_id, stage_task_id


def test_task_ids_round_trip_and_split_ids_are_not_stage_tasks() -> None:
    assert parse_stage_task_id(stage_task_id(2, range(64, 128))) == (2, range(64, 128))
    assert parse_stage_task_id("file-0:part-1.jsonl") is None
    assert parse_stage_task_id("s1-kg0-63x") is None


def position(
    marks: dict[str, int], watermark: int, groups: list[int], offsets: dict[str, int], attempt: int
) -> dict[str, Any]:
    return {
        "watermarks": {"marks": marks, "watermark": watermark},
        "groups": groups,
        "exchange": {"attempt": attempt, "offsets": offsets},
    }


def test_two_tasks_merged_into_one_take_the_least_event_time_and_each_partitions_offset() -> None:
    low = position({"a": 10, "b": 50}, 10, [1, 3], {"0": 5, "1": 7, "63": 2}, attempt=4)
    high = position({"a": 90, "b": 40}, 40, [64, 100], {"64": 9, "127": 1}, attempt=4)
    merged = merge_positions([(low, range(0, 64)), (high, range(64, 128))], range(0, 128))
    assert merged["watermarks"] == {"marks": {"a": 10, "b": 40}, "watermark": 10}
    assert merged["groups"] == [1, 3, 64, 100]
    assert merged["exchange"] == {"attempt": 4, "offsets": {"0": 5, "1": 7, "63": 2, "64": 9, "127": 1}}


def test_one_task_split_in_two_gives_each_only_its_groups() -> None:
    whole = position({"a": 10}, 10, [1, 70], {"1": 3, "70": 4}, attempt=2)
    first = merge_positions([(whole, range(0, 64))], range(0, 64))
    assert first["groups"] == [1] and first["exchange"]["offsets"] == {"1": 3}
    second = merge_positions([(whole, range(64, 128))], range(64, 128))
    assert second["groups"] == [70] and second["exchange"]["offsets"] == {"70": 4}


def test_in_process_snapshots_have_no_exchange_position() -> None:
    saved = {"watermarks": {"marks": {}, "watermark": MIN_WATERMARK}, "groups": [5]}
    merged = merge_positions([(saved, range(0, 128))], range(0, 128))
    assert "exchange" not in merged and merged["groups"] == [5]


def test_seal_task_seals_only_that_tasks_rows_and_keeps_ids_monotonic() -> None:
    staging = OutputStaging()
    staging.add("s1-kg0-63", [{"n": 1}])
    staging.add("s2-kg0-63", [{"n": 2}])
    staging.seal_task(3, "s1-kg0-63")
    assert staging.pending("s1-kg0-63") == [[3, [{"n": 1}]]]
    assert staging.pending("s2-kg0-63") == []  # still open: its own barriers are not aligned yet
    staging.add("s1-kg0-63", [{"n": 3}])  # after its barrier: the next checkpoint's
    staging.seal_task(3, "s2-kg0-63")
    assert staging.take_upto(3) == {"s1-kg0-63": [{"n": 1}], "s2-kg0-63": [{"n": 2}]}
    assert staging.open == {"s1-kg0-63": [{"n": 3}]}
    staging.seal_task(5, "s1-kg0-63")
    with pytest.raises(ValueError, match="backwards"):
        staging.seal_task(4, "s1-kg0-63")
