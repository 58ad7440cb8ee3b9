"""Quix Streams, the baseline the engine benchmarks compare with: one runner for every comparison.

Every comparison reads the same prefilled tansu topic as our rows, from the earliest offset, without
changelog topics, and measures events/s from the first event its pipeline counts to the last, so the
only thing that differs between them is the pipeline itself (``pipeline(sdf, seen)``). Needs the
``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

Seen = Callable[[], None]
"""Called by a pipeline once per input event it has handled: the runner stops after ``events`` calls."""
Pipeline = Callable[[Any, Seen], Any]
"""Builds the Quix pipeline: ``(StreamingDataFrame of the topic, seen) -> StreamingDataFrame``."""


def quix_events_per_second(
    bootstrap: str, topic: str, events: int, state_dir: str, pipeline: Pipeline
) -> float:
    """Runs ``pipeline`` in a Quix Streams application on ``topic`` until it has seen ``events`` events;
    returns events/s. Quix installs signal handlers, so call it in the main thread, after our loop."""
    from quixstreams import Application

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        use_changelog_topics=False,
        state_dir=state_dir,
    )
    count = 0
    started = 0.0

    def seen() -> None:
        nonlocal count, started
        if count == 0:
            started = time.perf_counter()
        count += 1
        if count >= events:
            app.stop()

    source = app.topic(topic, value_deserializer="json")
    # tansu does not report retention.ms, which Quix reads to size its state and repartition topics
    source.broker_config.extra_config.setdefault("retention.ms", str(7 * 86_400_000))
    pipeline(app.dataframe(source), seen)
    app.run()
    return count / (time.perf_counter() - started)


def counted(seen: Seen) -> Callable[[Any], Any]:
    """A pass-through step for ``sdf.apply`` that counts each value it sees."""

    def count(value: Any) -> Any:
        seen()
        return value

    return count


def versus(ours: float, theirs: float | None) -> str:
    """The our/their ratio cell of a table ("" when Quix did not run)."""
    return f"{ours / theirs:.2f}x" if theirs else ""


def quix_arguments(doc: str | None, events: int) -> argparse.Namespace:
    """The command line of a benchmark with a Quix comparison: ``--events N`` and ``--quix`` (or
    ``QUIX=1`` in the environment, as ``make bench QUIX=1`` passes it)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--events", type=int, default=events)
    parser.add_argument("--quix", action="store_true", default=bool(os.environ.get("QUIX")))
    return parser.parse_args()
