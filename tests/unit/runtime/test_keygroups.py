"""Key groups (runtime/exchange/keygroups.py): a key's group is stable (across processes, parallelisms
and runs, or a savepoint would restore state into the wrong task), the ranges of a stage's tasks cover
every group exactly once for every parallelism up to max_parallelism, and a rescale moves whole groups."""

from __future__ import annotations

import subprocess
import sys
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from heliosdb_streaming.runtime.exchange.keygroups import key_bytes, key_group, owned_groups, owner

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_keys = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
max_parallelisms = st.integers(min_value=1, max_value=4096)


@st.composite
def k_and_p(draw: st.DrawFn) -> tuple[int, int]:
    k = draw(max_parallelisms)
    return k, draw(st.integers(min_value=1, max_value=k))


@given(json_keys, max_parallelisms)
def test_a_keys_group_is_in_range_and_a_function_of_its_value(key: Any, k: int) -> None:
    group = key_group(key, k)
    assert 0 <= group < k
    assert key_group(key, k) == group
    assert key_bytes(key) == key_bytes(key)


@given(
    st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**64 - 1), min_size=2, max_size=6),
    max_parallelisms,
)
def test_equal_mappings_share_a_group_whatever_their_field_order(key: dict[str, int], k: int) -> None:
    reordered = dict(reversed(list(key.items())))
    assert list(reordered) != list(key)
    assert key_group(reordered, k) == key_group(key, k)


def test_strings_and_their_json_lookalikes_are_different_keys() -> None:
    assert key_bytes("1") != key_bytes(1)
    assert key_bytes("null") != key_bytes(None)
    assert key_bytes("true") != key_bytes(True)


def test_groups_are_stable_across_processes_and_hash_seeds() -> None:
    """Python's hash() of a str differs per process; a key group must not (savepoints, several workers)."""
    keys = ["card-0001", "merchant-07", "", "ünïcode", 42, [1, "a"], {"b": 1, "a": 2}]
    script = (
        "import json, sys\n"
        "from heliosdb_streaming.runtime.exchange.keygroups import key_group\n"
        "keys = json.loads(sys.argv[1])\n"
        "print(json.dumps([key_group(k, 128) for k in keys]))\n"
    )
    import json

    here = [key_group(k, 128) for k in keys]
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script, json.dumps(keys)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        assert json.loads(out.stdout) == here


def test_a_string_keys_group_is_crc32_of_its_utf8_bytes() -> None:
    """Pinned: changing the hash would send restored state to tasks that never see its keys."""
    for key in ("card-0001", "merchant-07", "amazon"):
        assert key_group(key, 128) == zlib.crc32(b"s" + key.encode()) % 128
    assert [key_group(f"card-{i:04d}", 128) for i in range(4)] == [
        zlib.crc32(f"scard-{i:04d}".encode()) % 128 for i in range(4)
    ]


@given(k_and_p())
def test_ranges_cover_every_group_exactly_once_in_order(kp: tuple[int, int]) -> None:
    k, p = kp
    ranges = [owned_groups(i, p, k) for i in range(p)]
    assert [g for r in ranges for g in r] == list(range(k))  # contiguous, in task order, no gap, no overlap
    for i, r in enumerate(ranges):
        assert r.step == 1
        assert all(owner(g, p, k) == i for g in r)
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1  # balanced: no task owns more than one group above another
    assert min(sizes) >= 1  # p <= K: every task owns at least one group


def test_ranges_for_every_parallelism_up_to_small_max_parallelisms() -> None:
    """Exhaustive for the small K a test job uses (and the default 128)."""
    for k in (*range(1, 40), 128):
        for p in range(1, k + 1):
            owners = [owner(g, p, k) for g in range(k)]
            assert owners == sorted(owners)
            assert set(owners) == set(range(p))
            for i in range(p):
                assert list(owned_groups(i, p, k)) == [g for g in range(k) if owners[g] == i]


@given(k_and_p(), st.data())
def test_owner_is_flinks_operator_index(kp: tuple[int, int], data: st.DataObject) -> None:
    """Flink: operatorIndex = keyGroup * parallelism / maxParallelism; range start = ceil(i * K / p)."""
    k, p = kp
    g = data.draw(st.integers(min_value=0, max_value=k - 1))
    assert owner(g, p, k) == g * p // k
    i = data.draw(st.integers(min_value=0, max_value=p - 1))
    assert owned_groups(i, p, k).start == (i * k + p - 1) // p


@settings(max_examples=200)
@given(
    st.lists(json_keys, min_size=1, max_size=60),
    st.integers(min_value=1, max_value=256).flatmap(
        lambda k: st.tuples(st.just(k), st.integers(1, k), st.integers(1, k))
    ),
)
def test_a_rescale_moves_whole_groups(keys: list[Any], kpp: tuple[int, int, int]) -> None:
    """From p1 to p2 tasks: every old task's keys split along group lines, each group goes to exactly
    one new task with all its keys, and the new task of a key is the owner of its (unchanged) group."""
    k, p1, p2 = kpp
    groups = {key_bytes(key): key_group(key, k) for key in keys}
    moved: dict[int, set[int]] = {}  # group -> new tasks its keys land on
    for key in keys:
        g = groups[key_bytes(key)]
        old, new = owner(g, p1, k), owner(g, p2, k)
        assert g in owned_groups(old, p1, k) and g in owned_groups(new, p2, k)
        moved.setdefault(g, set()).add(new)
    assert all(len(tasks) == 1 for tasks in moved.values())
    # the tasks at p1 and p2 hold the same groups in all: nothing is lost or doubled by the move
    assert sorted(g for i in range(p1) for g in owned_groups(i, p1, k)) == sorted(
        g for i in range(p2) for g in owned_groups(i, p2, k)
    )


def test_realistic_keys_spread_evenly_over_the_tasks() -> None:
    """A hash that clumps would put a skewed share of keys on one task (here: 10k card ids, 4 tasks)."""
    k, p = 128, 4
    per_task = [0] * p
    for i in range(10_000):
        per_task[owner(key_group(f"card-{i:05d}", k), p, k)] += 1
    assert max(per_task) < 10_000 / p * 1.15, per_task


def test_a_key_beyond_orjson_is_still_canonical() -> None:
    """An int over 64 bits inside a dict: the group must not depend on the dict's field order."""
    big = 2**70
    assert key_group({"a": big, "b": 1}, 128) == key_group({"b": 1, "a": big}, 128)
    assert key_bytes(big) == key_bytes(big)
