"""The ``python`` step: a user function applied to each record (map, filter or flat_map).

The function is imported once, when the task's chain is built; a batch is one tight loop of calls.
User code is a guest: whatever it raises, and whatever wrong thing it returns, becomes an error of
that record (:class:`UserFunctionError`, naming the function), which the job's ``on_error`` policy
then skips (counted in ``errors``, logged with the split and position) or turns into a failed run.
Records are handed to the function as they are: a map may mutate and return its input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from heliosdb_streaming.runtime.contracts import Batch, Record
from heliosdb_streaming.runtime.usercode import load_function, worker_allow_list

__all__ = ["PythonTransformation", "UserFunctionError"]

KINDS = ("map", "filter", "flat_map")


class UserFunctionError(Exception):
    """A user function raised, or returned something that is not what its kind promises."""

    def __init__(self, function: str, message: str) -> None:
        super().__init__(f"function {function} {message}")
        self.function = function


def _raised(function: str, e: Exception) -> UserFunctionError:
    error = UserFunctionError(function, f"raised {type(e).__name__}: {e}")
    error.__cause__ = e
    return error


class PythonTransformation:
    """Runs ``function`` (a ``module:qualname`` reference, or the callable itself) on every record."""

    def __init__(self, function: str, kind: str = "map", fn: Callable[[Record], Any] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown python step kind {kind!r}: use map, filter or flat_map")
        self.name = f"python-{kind}"
        self.function = function
        self.kind = kind
        self._fn: Callable[[Record], Any] = (
            fn if fn is not None else load_function(function, worker_allow_list())
        )
        self._run = {"map": self._map, "filter": self._filter, "flat_map": self._flat_map}[kind]

    def process(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        return self._run(records, errors)

    def _map(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        fn = self._fn
        out: Batch = []
        append = out.append
        for record in records:
            try:
                value = fn(record)
            except Exception as e:  # user code: any exception is the record's error
                errors.append((record, _raised(self.function, e)))
                continue
            if value.__class__ is dict:
                append(value)
            elif value is None:
                continue  # a map returning None drops the record
            elif isinstance(value, dict):
                append(value)
            else:
                errors.append((record, self._not_a_record(value)))
        return out

    def _filter(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        fn = self._fn
        kept: Batch = []
        append = kept.append
        for record in records:
            try:
                if fn(record):
                    append(record)
            except Exception as e:  # user code, including a result whose truth value raises
                errors.append((record, _raised(self.function, e)))
        return kept

    def _flat_map(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        fn = self._fn
        out: Batch = []
        for record in records:
            try:
                result = fn(record)
                if result is None:
                    continue
                if isinstance(result, dict | str | bytes) or not isinstance(result, Iterable):
                    errors.append(
                        (
                            record,
                            UserFunctionError(
                                self.function,
                                f"returned {_kind_of(result)}, not an iterable of records (flat_map)",
                            ),
                        )
                    )
                    continue
                produced = list(result)  # all of a record's outputs or none: a generator may raise late
            except Exception as e:
                errors.append((record, _raised(self.function, e)))
                continue
            for value in produced:
                if not isinstance(value, dict):
                    errors.append((record, self._not_a_record(value)))
                    break
            else:
                out.extend(produced)
        return out

    def _not_a_record(self, value: Any) -> UserFunctionError:
        return UserFunctionError(self.function, f"returned {_kind_of(value)}, not a record (a dict)")

    def on_time(self, now_ms: int) -> Batch:
        return []

    def on_end(self) -> Batch:
        return []


def _kind_of(value: Any) -> str:
    text = repr(value)
    return f"a {type(value).__name__} ({text[:60] + '...' if len(text) > 60 else text})"
