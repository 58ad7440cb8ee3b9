"""The sending side of a stage boundary: splits an origin's output by key group and computes the
origin's watermark from the records it routes.

The watermark of an origin is the largest event time it has routed (read from the time field of the
next stage's first event-time step) minus that step's lag (``graph.first_event_time_step``): so an
origin whose output is in event-time order is never late downstream, as if one task saw it all. A
``map`` between the boundary and that step which rewrites the time field is not seen here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from heliosdb_streaming.runtime.contracts import Batch, Record
from heliosdb_streaming.runtime.eventtime import MIN_WATERMARK, parse_event_time
from heliosdb_streaming.runtime.exchange.keygroups import GLOBAL_KEY_GROUP, key_group

GROUP_CACHE_KEYS = 65_536
"""String keys whose group the router remembers (keys repeat: merchants, cards). Only ``str`` keys are
cached: ``1``, ``1.0`` and ``True`` are equal dict keys in Python but different JSON keys."""


class Router:
    """Routes records of one boundary: key group = ``key_group(key_fn(record), max_parallelism)``,
    or the one global group when ``key_fn`` is None."""

    def __init__(
        self,
        key_fn: Callable[[Record], Any] | None,
        max_parallelism: int,
        time_field: str | None,
        lag_ms: int,
    ) -> None:
        self._key_fn = key_fn
        self._max_parallelism = max_parallelism
        self._time_field = time_field
        self._lag = lag_ms
        self._max_seen: dict[str, int] = {}
        self._groups: dict[str, int] = {}  # str key -> its key group (crc32 per record is the cost)

    def route(
        self, origin: str, records: Batch, errors: list[tuple[Record, Exception]]
    ) -> tuple[dict[int, Batch], int]:
        """The records per key group and the origin's watermark after them; a record whose key
        cannot be computed goes to ``errors``."""
        groups: dict[int, Batch] = {}
        key_fn = self._key_fn
        if key_fn is None:
            if records:
                groups[GLOBAL_KEY_GROUP] = records
        else:
            k = self._max_parallelism
            cache = self._groups
            for record in records:
                try:
                    key = key_fn(record)
                    if type(key) is str:
                        group = cache.get(key, -1)
                        if group < 0:
                            if len(cache) >= GROUP_CACHE_KEYS:
                                cache.clear()
                            group = cache[key] = key_group(key, k)
                    else:
                        group = key_group(key, k)
                except Exception as e:
                    errors.append((record, e))
                    continue
                bucket = groups.get(group)
                if bucket is None:
                    groups[group] = [record]
                else:
                    bucket.append(record)
        return groups, self._observe(origin, records)

    def _observe(self, origin: str, records: Batch) -> int:
        field = self._time_field
        seen = self._max_seen.get(origin)
        if field is not None:
            for record in records:
                ts = record.get(field)
                if type(ts) is not int:
                    try:
                        ts = parse_event_time(ts)
                    except ValueError:
                        continue  # the step itself reports the record
                if seen is None or ts > seen:
                    seen = ts
        if seen is None:
            return MIN_WATERMARK
        self._max_seen[origin] = seen
        return seen - self._lag
