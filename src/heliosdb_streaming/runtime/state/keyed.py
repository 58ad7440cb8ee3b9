"""Keyed state of a process function over a task's ``StateStore``: the handles of ``functions.state``.

Layout in the store (``<k>`` is the key's canonical JSON, see :func:`key_string`):

* value state: ``v|<name>|<k>`` -> the value;
* list state: ``l|<name>|<k>`` -> the list;
* map state: ``m|<name>|<k>|<map key as JSON>`` -> the value (one entry per map entry, so a map may
  grow beyond memory with RocksDB and one ``put`` writes one entry).

The key is stored in every entry's name as JSON, so the state of a key can be found again from the key
alone: moving it with its key group on a rescale reads ``json.loads(<k>)`` and hashes it
(``runtime/exchange/keygroups.py``). JSON text is self-delimiting, so no key's prefix is another's.

Values are copied in and out (dicts and lists through orjson), for three reasons: the memory backend
then behaves as RocksDB does (changing a value read from state does not change the state), a stored
value is never mutated after a snapshot copied the store, and a value that is not JSON-compatible is
refused when it is written (a ``TypeError`` of that record) instead of failing a later checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from heliosdb_streaming.functions.state import JsonValue, ListState, MapKey, MapState, ValueState
from heliosdb_streaming.runtime.contracts import StateStore
from heliosdb_streaming.runtime.state.cached import MISSING

_SCALARS = (str, int, float, bool, type(None))
_SORTED = orjson.OPT_SORT_KEYS


def key_string(key: Any) -> str:
    """The canonical JSON of a key (keys of objects sorted): equal keys give equal strings."""
    if isinstance(key, str):
        return orjson.dumps(key).decode()
    try:
        return orjson.dumps(key, option=_SORTED).decode()
    except TypeError:  # beyond orjson (an int over 64 bits, a non-JSON value): still deterministic
        return json.dumps(key, sort_keys=True, default=repr, separators=(",", ":"))


def copy_value(value: Any) -> Any:
    """A private copy of a JSON-compatible value; raises ``TypeError`` for anything else."""
    if isinstance(value, _SCALARS):
        if isinstance(value, float) and value != value:  # NaN is not JSON
            raise TypeError("state values must be JSON-compatible: NaN is not")
        return value
    if isinstance(value, dict | list | tuple):
        try:
            return orjson.loads(orjson.dumps(value))
        except TypeError as e:  # orjson.JSONEncodeError is a TypeError
            raise TypeError(f"state values must be JSON-compatible: {e}") from None
    raise TypeError(f"state values must be JSON-compatible, got {type(value).__name__}")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "|" in name:
        raise ValueError(f"state name must be a non-empty string without '|', got {name!r}")
    return name


class KeyScope:
    """The key being processed, shared by every handle of one function (set before each call)."""

    __slots__ = ("key", "kstr")

    def __init__(self) -> None:
        self.key: Any = None
        self.kstr: str | None = None

    def set(self, key: Any, kstr: str) -> None:
        self.key = key
        self.kstr = kstr

    def current(self) -> str:
        if self.kstr is None:
            raise RuntimeError("keyed state is only available in process() and on_timer(), not in open()")
        return self.kstr


class StoreValueState(ValueState):
    """The hot path of most functions (a count, a total): one Python call per access, the entry read
    straight from the dict that holds the store's values in memory (``lookup``; a miss goes to
    ``get``), no copy of scalars, and the "no key yet" check only when there is no key
    (``str + None`` raises). Writes go to the store at once: buffering them for the batch was
    slower when most keys of a batch are distinct (10,000 cards in batches of 4,096)."""

    __slots__ = ("_default", "_delete", "_get", "_lookup", "_prefix", "_put", "_scalar_default", "_scope")

    def __init__(self, store: StateStore, scope: KeyScope, name: str, default: Any) -> None:
        self._get = store.get
        self._put = store.put
        self._delete = store.delete
        lookup = getattr(store, "lookup", None)
        self._lookup: Callable[[str, Any], Any] = lookup() if lookup is not None else _no_lookup
        self._scope = scope
        self._prefix = f"v|{name}|"
        self._default = copy_value(default)
        self._scalar_default = isinstance(self._default, _SCALARS)

    def _entry(self) -> str:
        try:
            return self._prefix + self._scope.kstr  # type: ignore[operator]
        except TypeError:
            return self._prefix + self._scope.current()  # raises the "not in open()" error

    def value(self) -> JsonValue:
        try:
            sk = self._prefix + self._scope.kstr  # type: ignore[operator]
        except TypeError:
            sk = self._prefix + self._scope.current()  # raises the "not in open()" error
        v = self._lookup(sk, MISSING)
        if v is MISSING:
            v = self._get(sk)
            if v is None:
                return self._default if self._scalar_default else copy_value(self._default)
        t = type(v)
        return v if t is int or t is float or t is str or t is bool else copy_value(v)

    def update(self, value: JsonValue) -> None:
        try:
            sk = self._prefix + self._scope.kstr  # type: ignore[operator]
        except TypeError:
            sk = self._prefix + self._scope.current()
        t = type(value)
        if t is int or t is str or t is bool:
            self._put(sk, value)
        elif value is None:
            self._delete(sk)
        else:
            self._put(sk, copy_value(value))

    def clear(self) -> None:
        self._delete(self._entry())


def _no_lookup(key: str, default: Any) -> Any:
    return default


class StoreListState(ListState):
    __slots__ = ("_prefix", "_scope", "_store")

    def __init__(self, store: StateStore, scope: KeyScope, name: str) -> None:
        self._store = store
        self._scope = scope
        self._prefix = f"l|{name}|"

    def get(self) -> list[JsonValue]:
        v = self._store.get(self._prefix + self._scope.current())
        return [] if v is None else list(copy_value(v))

    def add(self, value: JsonValue) -> None:
        sk = self._prefix + self._scope.current()
        old = self._store.get(sk)
        self._store.put(sk, [*(old or ()), copy_value(value)])  # a new list: stored ones never change

    def update(self, values: list[JsonValue]) -> None:
        if not values:
            self.clear()
            return
        if not isinstance(values, list | tuple):
            raise TypeError(f"ListState.update takes a list, got {type(values).__name__}")
        self._store.put(self._prefix + self._scope.current(), copy_value(list(values)))

    def clear(self) -> None:
        self._store.delete(self._prefix + self._scope.current())


class StoreMapState(MapState):
    __slots__ = ("_prefix", "_scope", "_store")

    def __init__(self, store: StateStore, scope: KeyScope, name: str) -> None:
        self._store = store
        self._scope = scope
        self._prefix = f"m|{name}|"

    def _entry(self, key: MapKey) -> str:
        if not isinstance(key, _SCALARS):
            raise TypeError(f"MapState keys are JSON scalars (str, int, float, bool, None), got {key!r}")
        return f"{self._prefix}{self._scope.current()}|{orjson.dumps(key).decode()}"

    def _map_prefix(self) -> str:
        return f"{self._prefix}{self._scope.current()}|"

    def get(self, key: MapKey, default: JsonValue = None) -> JsonValue:
        v = self._store.get(self._entry(key))
        if v is None:
            return default
        return v if isinstance(v, _SCALARS) else copy_value(v)

    def put(self, key: MapKey, value: JsonValue) -> None:
        if value is None:
            raise TypeError("MapState values must not be None (use remove)")
        self._store.put(self._entry(key), copy_value(value))

    def remove(self, key: MapKey) -> None:
        self._store.delete(self._entry(key))

    def contains(self, key: MapKey) -> bool:
        return self._store.get(self._entry(key)) is not None

    def keys(self) -> Iterator[MapKey]:
        prefix = self._map_prefix()
        n = len(prefix)
        return iter([orjson.loads(sk[n:]) for sk, _ in self._store.items(prefix)])

    def items(self) -> Iterator[tuple[MapKey, JsonValue]]:
        prefix = self._map_prefix()
        n = len(prefix)
        return iter([(orjson.loads(sk[n:]), copy_value(v)) for sk, v in self._store.items(prefix)])

    def clear(self) -> None:
        for sk in [sk for sk, _ in self._store.items(self._map_prefix())]:
            self._store.delete(sk)


class KeyedStateRegistry:
    """Creates the state handles of one function instance and keeps their names unique."""

    def __init__(self, store: StateStore, scope: KeyScope) -> None:
        self._store = store
        self._scope = scope
        self._declared: dict[str, tuple[str, Any]] = {}

    def _declare(self, name: str, kind: str, handle: Any) -> Any:
        _check_name(name)
        previous = self._declared.get(name)
        if previous is not None:
            if previous[0] != kind:
                raise ValueError(f"state {name!r} is already declared as {previous[0]} state, not {kind}")
            return previous[1]
        self._declared[name] = (kind, handle)
        return handle

    def value_state(self, name: str, default: Any = None) -> ValueState:
        handle: ValueState = self._declare(
            name, "value", StoreValueState(self._store, self._scope, _check_name(name), default)
        )
        return handle

    def map_state(self, name: str) -> MapState:
        handle: MapState = self._declare(
            name, "map", StoreMapState(self._store, self._scope, _check_name(name))
        )
        return handle

    def list_state(self, name: str) -> ListState:
        handle: ListState = self._declare(
            name, "list", StoreListState(self._store, self._scope, _check_name(name))
        )
        return handle
