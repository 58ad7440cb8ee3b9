"""A log-bucketed latency histogram: cheap to record into, mergeable, good to ~4% at any quantile.

Workers keep cumulative bucket counts and ship them in heartbeats; the control plane subtracts the
previous cumulative to get deltas per minute, so quantiles over any window are exact to one bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

_BASE_MS = 0.01  # smallest resolved latency: 10 microseconds
_GROWTH = 1.04
_LOG_GROWTH = math.log(_GROWTH)
MAX_BUCKET = 480  # 0.01 ms * 1.04**480 ~ 1.5e6 ms: anything slower lands in the last bucket


def bucket_of(latency_ms: float) -> int:
    if latency_ms <= _BASE_MS:
        return 0
    return min(int(math.log(latency_ms / _BASE_MS) / _LOG_GROWTH) + 1, MAX_BUCKET)


def bucket_upper_ms(index: int) -> float:
    return _BASE_MS * _GROWTH**index


class LatencyHistogram:
    """Counts per bucket index (sparse dict)."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        self.total = sum(self.counts.values())

    def record(self, latency_ms: float, count: int = 1) -> None:
        b = bucket_of(latency_ms)
        self.counts[b] = self.counts.get(b, 0) + count
        self.total += count

    def merge(self, other: Mapping[int, int]) -> None:
        for b, c in other.items():
            self.counts[b] = self.counts.get(b, 0) + c
            self.total += c

    def minus(self, earlier: Mapping[int, int]) -> dict[int, int]:
        """Bucket counts added since ``earlier`` (a previous cumulative copy of this histogram)."""
        return {b: c - earlier.get(b, 0) for b, c in self.counts.items() if c - earlier.get(b, 0) > 0}

    def quantile(self, q: float) -> float:
        return quantile_of(self.counts, q)


def quantile_of(counts: Mapping[int, int], q: float) -> float:
    """Upper bound (ms) of the bucket holding quantile ``q`` of the counts; 0.0 when empty."""
    total = sum(counts.values())
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for b in sorted(counts):
        seen += counts[b]
        if seen >= rank:
            return round(bucket_upper_ms(b), 3)
    return round(bucket_upper_ms(max(counts)), 3)


def merge_all(parts: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in parts:
        for b, c in part.items():
            out[b] = out.get(b, 0) + c
    return out
