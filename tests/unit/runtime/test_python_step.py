"""The ``python`` step (``runtime/transformations/python.py``): map, filter, flat_map over a batch, and
user errors as errors of their record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.runtime.transformations.python import PythonTransformation, UserFunctionError
from heliosdb_streaming.runtime.usercode import UserCodeLoadError

USERPKG = Path(__file__).resolve().parents[2] / "userpkg"
REF = "helios_userpkg.records"


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))


def run(
    step: PythonTransformation, records: list[dict[str, Any]]
) -> tuple[list[Any], list[tuple[Any, Exception]]]:
    errors: list[tuple[Any, Exception]] = []
    return step.process(records, errors), errors


def test_map_returns_new_records_and_none_drops() -> None:
    out, errors = run(
        PythonTransformation(f"{REF}:add_fee", "map"), [{"amount": 250}, {"x": 1}, {"amount": 10}]
    )
    assert out == [{"amount": 250, "fee": 2.5}, {"amount": 10, "fee": 0.1}]
    assert errors == []


def test_filter_keeps_truthy() -> None:
    records = [{"amount": 100}, {"amount": 99}, {}, {"amount": 500}]
    out, errors = run(PythonTransformation(f"{REF}:is_large", "filter"), records)
    assert out == [{"amount": 100}, {"amount": 500}] and errors == []
    assert out[0] is records[0]  # the record itself passes, unchanged


def test_flat_map_expands_in_order() -> None:
    out, errors = run(
        PythonTransformation(f"{REF}:split_items", "flat_map"),
        [{"id": 1, "items": ["a", "b"]}, {"id": 2, "items": []}, {"id": 3, "items": ["c"]}],
    )
    assert out == [{"order": 1, "item": "a"}, {"order": 1, "item": "b"}, {"order": 3, "item": "c"}]
    assert errors == []


def test_raising_function_is_an_error_of_its_record_only() -> None:
    records = [{"id": i} for i in range(1, 8)]
    out, errors = run(PythonTransformation(f"{REF}:fragile", "map"), records)
    assert out == [{"id": i} for i in (1, 2, 4, 5, 7)]
    assert [r for r, _ in errors] == [{"id": 3}, {"id": 6}]
    error = errors[0][1]
    assert isinstance(error, UserFunctionError)
    assert str(error) == f"function {REF}:fragile raised ValueError: cannot score order 3"
    assert isinstance(error.__cause__, ValueError)


def test_a_result_that_is_not_a_record_is_an_error() -> None:
    out, errors = run(PythonTransformation(f"{REF}:not_a_dict", "map"), [{"id": 1}, {"id": 2}])
    assert out == [{"id": 2}]
    assert [(r, str(e)) for r, e in errors] == [
        ({"id": 1}, f"function {REF}:not_a_dict returned a list ([1]), not a record (a dict)")
    ]


def test_flat_map_results_that_are_not_iterables_of_records() -> None:
    def bad(record: dict[str, Any]) -> Any:
        return {
            "dict": record,
            "items": [record],
            "str": "abc",
            "int": 5,
            "none": None,
            "mixed": [record, 1],
        }[record["kind"]]

    kinds = ["dict", "items", "str", "int", "none", "mixed"]
    out, errors = run(PythonTransformation("x:y", "flat_map", fn=bad), [{"kind": k} for k in kinds])
    assert out == [{"kind": "items"}]  # None is no output; a bad element fails its whole record
    assert [r["kind"] for r, _ in errors] == ["dict", "str", "int", "mixed"]
    assert "returned a dict" in str(errors[0][1]) and "not an iterable of records" in str(errors[0][1])
    assert str(errors[3][1]) == "function x:y returned a int (1), not a record (a dict)"


def test_flat_map_generator_raising_midway_emits_nothing_for_that_record() -> None:
    def gen(record: dict[str, Any]) -> Any:
        yield {"n": 1}
        raise KeyError("late")

    out, errors = run(PythonTransformation("x:gen", "flat_map", fn=gen), [{"a": 1}])
    assert out == [] and str(errors[0][1]) == "function x:gen raised KeyError: 'late'"


def test_import_failure_is_raised_when_the_step_is_built() -> None:
    with pytest.raises(UserCodeLoadError, match="no module named 'helios_nowhere'"):
        PythonTransformation("helios_nowhere:fn", "map")
    with pytest.raises(ValueError, match="unknown python step kind"):
        PythonTransformation(f"{REF}:add_fee", "reduce")


def test_a_worker_given_an_allow_list_checks_what_it_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOS_PYTHON_MODULES", "helios_userpkg")
    assert PythonTransformation(f"{REF}:add_fee").kind == "map"
    with pytest.raises(UserCodeLoadError, match="is loads of module 'json', which is not allowed"):
        PythonTransformation(f"{REF}:reexported")
    monkeypatch.setenv("HELIOS_PYTHON_MODULES", "")
    with pytest.raises(UserCodeLoadError, match=r"allowed: none"):
        PythonTransformation(f"{REF}:add_fee")
