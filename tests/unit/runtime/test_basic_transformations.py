"""filter / map / key_by: behaviour per batch, including the per-record error path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from heliosdb_streaming.model.expr import EvaluationError, ExpressionError
from heliosdb_streaming.runtime.contracts import Record, Transformation
from heliosdb_streaming.runtime.transformations.basic import (
    FilterTransformation,
    KeyByTransformation,
    MapTransformation,
    compile_key,
)


def run(step: Transformation, records: list[Record]) -> tuple[list[Record], list[tuple[Record, Exception]]]:
    errors: list[tuple[Record, Exception]] = []
    return step.process(records, errors), errors


# ------------------------------------------------------------------------------------------ filter


def test_filter_keeps_matching_records_in_order() -> None:
    step = FilterTransformation("amount > 10000")
    records = [{"id": i, "amount": a} for i, a in enumerate([5, 20000, 10000, 10001, 30000])]
    out, errors = run(step, records)
    assert [r["id"] for r in out] == [1, 3, 4]
    assert errors == []
    assert out[0] is records[1]  # records pass through untouched
    assert step.name == "filter"


def test_filter_null_is_false() -> None:
    out, errors = run(FilterTransformation("amount > 1"), [{"amount": None}, {}, {"amount": 2}])
    assert out == [{"amount": 2}]
    assert errors == []


def test_filter_error_path_reports_bad_records_and_keeps_good_ones() -> None:
    step = FilterTransformation("amount > 10000", name="big")
    records: list[Record] = [
        {"id": 0, "amount": 20000},
        {"id": 1, "amount": "abc"},
        {"id": 2, "amount": 5},
        {"id": 3, "amount": 30000},
        {"id": 4, "amount": [1]},
        {"id": 5, "amount": 10001},
    ]
    out, errors = run(step, records)
    assert [r["id"] for r in out] == [0, 3, 5]
    assert [r["id"] for r, _ in errors] == [1, 4]
    assert all(isinstance(e, EvaluationError) for _, e in errors)
    assert errors[0][0] is records[1]
    assert "amount > 10000" in str(errors[0][1])
    assert step.name == "big"


def test_filter_appends_to_existing_errors() -> None:
    errors: list[tuple[Record, Exception]] = [({"old": 1}, ValueError("x"))]
    out = FilterTransformation("1 / x > 0").process([{"x": 0}, {"x": 1}], errors)
    assert out == [{"x": 1}]
    assert len(errors) == 2 and errors[1][0] == {"x": 0}


def test_filter_empty_batch_and_timers() -> None:
    step = FilterTransformation("true")
    assert run(step, []) == ([], [])
    assert step.on_time(123) == []
    assert step.on_end() == []


def test_filter_rejects_bad_condition() -> None:
    with pytest.raises(ExpressionError):
        FilterTransformation("amount >")


# ------------------------------------------------------------------------------------------ map


def test_map_adds_fields_from_the_original_record() -> None:
    step = MapTransformation({"total": "price * qty", "name": "upper(name)", "price": "price + 1"})
    record = {"price": 2, "qty": 3, "name": "ab"}
    original = copy.deepcopy(record)
    out, errors = run(step, [record])
    # total sees the input price (2), not the new one (3)
    assert out == [{"price": 3, "qty": 3, "name": "AB", "total": 6}]
    assert errors == []
    assert record == original  # input not mutated
    assert out[0] is not record


def test_map_swap_uses_input_values() -> None:
    out, _ = run(MapTransformation({"a": "b", "b": "a"}), [{"a": 1, "b": 2}])
    assert out == [{"a": 2, "b": 1}]


def test_map_drop() -> None:
    step = MapTransformation({"x2": "x * 2"}, drop=["x", "missing"])
    out, _ = run(step, [{"x": 1, "y": 2}])
    assert out == [{"y": 2, "x2": 2}]
    drop_only = MapTransformation({}, drop=["y"])
    assert run(drop_only, [{"x": 1, "y": 2}])[0] == [{"x": 1}]


def test_map_drop_wins_over_computed_field() -> None:
    out, _ = run(MapTransformation({"x": "1"}, drop=["x"]), [{"x": 5}])
    assert out == [{}]


def test_map_nested_fields_copy_on_write() -> None:
    step = MapTransformation(
        {"payload.total": "payload.a + payload.b", "meta.new.deep": "'v'", "id.sub": "1"},
        drop=["payload.a", "other.gone", "nothing.here"],
    )
    record: dict[str, Any] = {"id": 7, "payload": {"a": 1, "b": 2}, "other": {"gone": 1, "kept": 2}}
    original = copy.deepcopy(record)
    out, errors = run(step, [record])
    assert errors == []
    assert out == [
        {
            "id": {"sub": 1},  # a non-object in the way is replaced by an object
            "payload": {"b": 2, "total": 3},
            "other": {"kept": 2},
            "meta": {"new": {"deep": "v"}},
        }
    ]
    assert record == original  # nested objects of the input are not mutated


def test_map_error_path() -> None:
    step = MapTransformation({"ratio": "a / b"})
    records: list[Record] = [{"a": 1, "b": 2}, {"a": 1, "b": 0}, {"a": 3, "b": 4}, {"a": "x", "b": 1}]
    out, errors = run(step, records)
    assert out == [{"a": 1, "b": 2, "ratio": 0.5}, {"a": 3, "b": 4, "ratio": 0.75}]
    assert [r for r, _ in errors] == [records[1], records[3]]
    assert all(isinstance(e, EvaluationError) for _, e in errors)
    assert "division by zero" in str(errors[0][1])


def test_map_missing_fields_give_null() -> None:
    out, _ = run(MapTransformation({"u": "user.name"}), [{"x": 1}])
    assert out == [{"x": 1, "u": None}]


def test_map_validation() -> None:
    with pytest.raises(ExpressionError):
        MapTransformation({"x": "lower("})
    with pytest.raises(ValueError):
        MapTransformation({"": "1"})
    step = MapTransformation({"x": "1"})
    assert step.name == "map"
    assert step.on_time(0) == [] and step.on_end() == []


# ------------------------------------------------------------------------------------------ key_by


def test_key_by_passes_records_and_exposes_key_fn() -> None:
    step = KeyByTransformation("user.id")
    records: list[Record] = [{"user": {"id": 1}}, {"user": {"id": "b"}}, {}]
    out, errors = run(step, records)
    assert out == records and errors == []
    assert [step.key_fn(r) for r in records] == [1, "b", None]
    assert step.name == "key_by"
    assert step.on_time(0) == [] and step.on_end() == []


def test_key_by_expression_keys() -> None:
    step = KeyByTransformation("lower(country) + '-' + to_string(region)")
    assert step.key_fn({"country": "DE", "region": 3}) == "de-3"
    key = compile_key("user_id")
    assert key({"user_id": 42}) == 42
    assert key({}) is None
    with pytest.raises(ExpressionError):
        KeyByTransformation("a +")
    with pytest.raises(EvaluationError):
        compile_key("a * 2")({"a": "x"})


def test_steps_follow_the_transformation_protocol() -> None:
    steps: list[Transformation] = [
        FilterTransformation("x > 0"),
        MapTransformation({"y": "x + 1"}),
        KeyByTransformation("y"),
    ]
    batch: list[Record] = [{"x": 0}, {"x": 1}, {"x": "bad"}, {"x": 2}]
    errors: list[tuple[Record, Exception]] = []
    for step in steps:
        batch = step.process(batch, errors)
    assert batch == [{"x": 1, "y": 2}, {"x": 2, "y": 3}]
    assert [r for r, _ in errors] == [{"x": "bad"}]
