"""Record functions as a user writes them: one record (a dict) in, a record / bool / iterable out."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from json import loads as reexported  # code of another module, under a name of this one
from typing import Any

__all__ = ["json", "reexported"]  # what a reference must not reach through this module

NOT_A_FUNCTION = 42


def add_fee(record: dict[str, Any]) -> dict[str, Any] | None:
    """map: a 1% fee on the amount; records without an amount are dropped (None)."""
    if "amount" not in record:
        return None
    return {**record, "fee": round(record["amount"] * 0.01, 2)}


def slow_fee(record: dict[str, Any]) -> dict[str, Any]:
    """map with a cost (0.3 ms a record), so that a bounded job runs long enough to be killed mid-run."""
    time.sleep(0.0003)
    return {**record, "fee": round(record["amount"] * 0.01, 2)}


def slower_fee(record: dict[str, Any]) -> dict[str, Any]:
    """``slow_fee`` at 1 ms a record, so that a savepoint of a bounded job is surely taken mid-run."""
    time.sleep(0.001)
    return {**record, "fee": round(record["amount"] * 0.01, 2)}


def is_large(record: dict[str, Any]) -> bool:
    """filter: amounts of 100 and more."""
    return bool(record.get("amount", 0) >= 100)


def split_items(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """flat_map: one record per item of the order."""
    for item in record.get("items", []):
        yield {"order": record["id"], "item": item}


def fragile(record: dict[str, Any]) -> dict[str, Any]:
    """map that raises on ids divisible by 3 (a user bug)."""
    if record["id"] % 3 == 0:
        raise ValueError(f"cannot score order {record['id']}")
    return record


def not_a_dict(record: dict[str, Any]) -> Any:
    """map returning a non-record for odd ids."""
    return record if record["id"] % 2 == 0 else [record["id"]]


def double(record: dict[str, Any]) -> dict[str, Any]:
    """map for the benchmark: the same as the expression map ``{"amount2": "amount * 2"}``."""
    out = dict(record)
    out["amount2"] = record["amount"] * 2
    return out


class Scorer:
    """A callable object at module level: a reference may name it."""

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "score": len(record)}

    @staticmethod
    def static_rule(record: dict[str, Any]) -> bool:
        return True


scorer = Scorer()


def make_closure() -> Any:
    def inner(record: dict[str, Any]) -> dict[str, Any]:
        return record

    return inner


def slow_keep(record: dict[str, Any]) -> bool:
    """filter that keeps every record at about 0.1 ms each: a saturated step that keeps the input's grouping
    (a filter), so a keyed step after it needs no repartition (the autoscaler tests)."""
    time.sleep(0.0001)
    return True
