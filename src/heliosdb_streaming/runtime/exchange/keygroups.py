"""Key groups: the unit keyed state is partitioned, routed and rescaled by (Flink's key groups).

A keyed stage has ``max_parallelism`` key groups, fixed for the job's life. A key's group is a stable
hash of the key modulo ``max_parallelism`` (stable across processes and Python versions: not
``hash()``, which is salted per process). Task ``i`` of ``p`` owns the contiguous range of groups
``g`` with ``g * p // max_parallelism == i``, so a rescale moves whole groups with their state, and
restoring at any parallelism up to ``max_parallelism`` gives the same groups the same keys.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson

GLOBAL_KEY_GROUP = 0
"""The one key group of a global (unkeyed) stage."""


def key_bytes(key: Any) -> bytes:
    """A canonical encoding of a key value: equal keys (as JSON values) give equal bytes."""
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    try:
        return b"j" + orjson.dumps(key, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:  # beyond orjson (an int over 64 bits): the standard library, keys still sorted
        return b"p" + json.dumps(key, sort_keys=True, default=repr).encode()


def key_group(key: Any, max_parallelism: int) -> int:
    """The key group of ``key``: crc32 of its canonical bytes modulo ``max_parallelism``."""
    return zlib.crc32(key_bytes(key)) % max_parallelism


def owner(group: int, parallelism: int, max_parallelism: int) -> int:
    """The index of the task (of ``parallelism``) that owns key group ``group``."""
    return group * parallelism // max_parallelism


def owned_groups(index: int, parallelism: int, max_parallelism: int) -> range:
    """The key groups task ``index`` of ``parallelism`` owns: a contiguous range (may be empty)."""
    start = -(-index * max_parallelism // parallelism)  # ceil(index * K / p)
    end = -(-(index + 1) * max_parallelism // parallelism)
    return range(start, end)
