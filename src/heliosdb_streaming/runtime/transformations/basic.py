"""Stateless steps: filter, map and key_by, all driven by the expression language (``model/expr.py``).

Expressions are compiled once, when the step is built. A batch runs as one list comprehension; only
if some record makes an expression raise :class:`EvaluationError` is the batch redone record by
record, so that the bad records go to ``errors`` (and are skipped) while the good ones pass in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from heliosdb_streaming.model.expr import EvaluationError, compile_condition, compile_expression
from heliosdb_streaming.runtime.contracts import Batch, Record

__all__ = ["FilterTransformation", "KeyByTransformation", "MapTransformation", "compile_key"]


def compile_key(key: str) -> Callable[[Record], Any]:
    """The key function of a keyed step: the value of the expression ``key`` (usually a field name).

    A missing key field gives ``None``, which is a key like any other.
    """
    return compile_expression(key)


class FilterTransformation:
    """Keeps the records for which ``condition`` is true (``null`` counts as false)."""

    def __init__(self, condition: str, name: str = "filter") -> None:
        self.name = name
        self.condition = condition
        self._test = compile_condition(condition)

    def process(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        test = self._test
        try:
            return [r for r in records if test(r)]
        except EvaluationError:
            pass
        kept: Batch = []
        for record in records:
            try:
                if test(record):
                    kept.append(record)
            except EvaluationError as e:
                errors.append((record, e))
        return kept

    def on_time(self, now_ms: int) -> Batch:
        return []

    def on_end(self) -> Batch:
        return []


class MapTransformation:
    """Adds or replaces fields computed from the record, and drops fields.

    Each output record is a new dict: the input's fields, then every ``fields`` entry
    (``name -> expression``) evaluated against the *input* record (so ``{"a": "b", "b": "a"}`` swaps),
    then the ``drop`` names removed (drop wins over a computed field of the same name). The input
    record is never mutated.

    A dotted name (``"payload.total"``) sets or drops a nested field; the objects along the way are
    copied, missing ones are created and a non-object one in the way is replaced by an object. A key
    that really contains a dot therefore cannot be written by a map.
    """

    def __init__(self, fields: dict[str, str], drop: list[str] | None = None, name: str = "map") -> None:
        self.name = name
        self.fields = dict(fields)
        self.drop = list(drop or [])
        self._flat: list[tuple[str, Callable[[Record], Any]]] = []
        self._nested: list[tuple[list[str], Callable[[Record], Any]]] = []
        for field, text in self.fields.items():
            if not field:
                raise ValueError("map field names must not be empty")
            fn = compile_expression(text)
            if "." in field:
                self._nested.append((field.split("."), fn))
            else:
                self._flat.append((field, fn))
        self._drop_flat = [d for d in self.drop if "." not in d]
        self._drop_nested = [d.split(".") for d in self.drop if "." in d]

    def _apply(self, record: Record) -> Record:
        out = dict(record)
        for field, fn in self._flat:
            out[field] = fn(record)
        if self._nested:
            values = [(path, fn(record)) for path, fn in self._nested]
            for path, value in values:
                _set_nested(out, path, value)
        for field in self._drop_flat:
            out.pop(field, None)
        for path in self._drop_nested:
            _drop_nested(out, path)
        return out

    def process(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        apply = self._apply
        try:
            return [apply(r) for r in records]
        except EvaluationError:
            pass
        out: Batch = []
        for record in records:
            try:
                out.append(apply(record))
            except EvaluationError as e:
                errors.append((record, e))
        return out

    def on_time(self, now_ms: int) -> Batch:
        return []

    def on_end(self) -> Batch:
        return []


def _set_nested(out: Record, path: list[str], value: Any) -> None:
    """Sets ``out[p0][p1]... = value``, copying each nested object first (they are shared with the input)."""
    node = out
    for part in path[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[path[-1]] = value


def _drop_nested(out: Record, path: list[str]) -> None:
    """Removes ``out[p0][p1]...`` if present, copying the objects on the way (never the input's)."""
    parents = [out]
    for part in path[:-1]:
        child = parents[-1].get(part)
        if not isinstance(child, dict):
            return
        parents.append(child)
    if path[-1] not in parents[-1]:
        return
    node = out
    for part in path[:-1]:
        child = dict(node[part])
        node[part] = child
        node = child
    del node[path[-1]]


class KeyByTransformation:
    """Declares the key of the keyed steps that follow; records pass through unchanged.

    :attr:`key_fn` gives a record's key (the value of the ``key`` expression); windows and CEP use it.
    """

    def __init__(self, key: str, name: str = "key_by") -> None:
        self.name = name
        self.key = key
        self.key_fn: Callable[[Record], Any] = compile_key(key)

    def process(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        return records

    def on_time(self, now_ms: int) -> Batch:
        return []

    def on_end(self) -> Batch:
        return []
