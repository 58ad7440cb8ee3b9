"""Keyed state handles over a state store: scoping to the current key, copies, layout, both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from heliosdb_streaming.runtime.contracts import StateStore
from heliosdb_streaming.runtime.exchange.keygroups import key_group
from heliosdb_streaming.runtime.state.keyed import KeyedStateRegistry, KeyScope, key_string
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.state.rocksdb import RocksDBStateStore


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore()
        return
    s = RocksDBStateStore(tmp_path / "db")
    yield s
    s.close()


def at(scope: KeyScope, key: object) -> None:
    scope.set(key, key_string(key))


def test_value_state_is_per_key_with_a_default(store: StateStore) -> None:
    scope = KeyScope()
    reg = KeyedStateRegistry(store, scope)
    count = reg.value_state("count", default=0)
    at(scope, "card-1")
    assert count.value() == 0
    count.update(count.value() + 5)
    at(scope, "card-2")
    assert count.value() == 0
    count.update(1)
    at(scope, "card-1")
    assert count.value() == 5
    count.clear()
    assert count.value() == 0
    at(scope, "card-2")
    assert count.value() == 1
    count.update(None)  # None clears, as Flink's update(null)
    assert count.value() == 0
    assert list(store.items("v|")) == []


def test_values_read_are_copies_and_mutable_defaults_are_not_shared(store: StateStore) -> None:
    scope = KeyScope()
    reg = KeyedStateRegistry(store, scope)
    seen = reg.value_state("seen", default={"n": 0})
    at(scope, 1)
    d = seen.value()
    d["n"] += 1  # not updated: the state keeps the default
    assert seen.value() == {"n": 0}
    seen.update(d)
    d["n"] = 99  # changing the object after update does not change the state either
    assert seen.value() == {"n": 1}
    at(scope, 2)
    assert seen.value() == {"n": 0}


def test_map_state(store: StateStore) -> None:
    scope = KeyScope()
    reg = KeyedStateRegistry(store, scope)
    merchants = reg.map_state("merchants")
    at(scope, "a")
    merchants.put("m1", 10)
    merchants.put(7, {"x": [1, 2]})
    merchants.put("m|2", 3)  # separators in map keys are fine
    assert merchants.get("m1") == 10
    assert merchants.get("missing", "d") == "d"
    assert merchants.contains(7) and not merchants.contains("7")
    assert sorted(map(str, merchants.keys())) == ["7", "m1", "m|2"]
    assert dict(merchants.items()) == {"m1": 10, 7: {"x": [1, 2]}, "m|2": 3}
    at(scope, "a|")  # a key whose text starts like another's sees none of its entries
    assert list(merchants.keys()) == []
    merchants.put("m1", 1)
    at(scope, "a")
    merchants.remove("m1")
    merchants.remove("never")
    assert dict(merchants.items()) == {7: {"x": [1, 2]}, "m|2": 3}
    merchants.clear()
    assert list(merchants.items()) == []
    at(scope, "a|")
    assert dict(merchants.items()) == {"m1": 1}
    with pytest.raises(TypeError):
        merchants.put(("tuple",), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        merchants.put("k", None)


def test_list_state(store: StateStore) -> None:
    scope = KeyScope()
    reg = KeyedStateRegistry(store, scope)
    recent = reg.list_state("recent")
    at(scope, {"card": 1, "bank": "x"})
    assert recent.get() == []
    recent.add(1)
    recent.add({"a": 2})
    got = recent.get()
    got.append("not kept")
    assert recent.get() == [1, {"a": 2}]
    recent.update([3, 4])
    assert recent.get() == [3, 4]
    at(scope, {"bank": "x", "card": 1})  # equal dict keys in another order are the same key
    assert recent.get() == [3, 4]
    recent.update([])
    assert recent.get() == []
    recent.add(5)
    recent.clear()
    assert recent.get() == []


def test_values_must_be_json_compatible(store: StateStore) -> None:
    scope = KeyScope()
    reg = KeyedStateRegistry(store, scope)
    v = reg.value_state("v")
    at(scope, "k")
    for bad in (object(), {1, 2}, {"a": object()}, float("nan"), b"bytes"):
        with pytest.raises(TypeError, match="JSON-compatible"):
            v.update(bad)
    assert v.value() is None
    with pytest.raises(TypeError):
        reg.list_state("l").add(object())


def test_declarations_are_checked_and_shared() -> None:
    reg = KeyedStateRegistry(MemoryStateStore(), KeyScope())
    a = reg.value_state("a", default=1)
    assert reg.value_state("a") is a
    with pytest.raises(ValueError, match="already declared as value"):
        reg.map_state("a")
    for bad in ("", "a|b"):
        with pytest.raises(ValueError, match="state name"):
            reg.list_state(bad)
    with pytest.raises(RuntimeError, match="only available in process"):
        a.value()  # no key yet: open() declares, it does not read


def test_entries_name_their_key_so_state_can_follow_its_key_group() -> None:
    """A rescale moves state by key group: every entry's name holds the key as JSON to hash."""
    store = MemoryStateStore()
    scope = KeyScope()
    reg = KeyedStateRegistry(store, scope)
    total, seen, hist = reg.value_state("total"), reg.map_state("seen"), reg.list_state("hist")
    keys = ["card-1", 42, None, ["a", 1]]
    for k in keys:
        at(scope, k)
        total.update(1)
        seen.put("m", 1)
        hist.add(1)
    groups: dict[int, set[str]] = {}
    for sk, _ in store.items():
        kind, _name, rest = sk.split("|", 2)
        key_json = rest if kind != "m" else rest.rsplit("|", 1)[0]
        key = orjson.loads(key_json)
        assert key in keys, sk
        groups.setdefault(key_group(key, 128), set()).add(kind)
    assert {g for g in groups} == {key_group(k, 128) for k in keys}
    assert all(kinds == {"v", "m", "l"} for kinds in groups.values())
