"""Waiting for an observable condition with a deadline, instead of sleeping for a guessed time.

A test that sleeps "long enough" for something to happen is slow where the machine is fast and flaky
where it is busy; a test that polls for the thing itself (a status, a row count, a metric, a log line)
continues as soon as it happened and says what it waited for when it did not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    check: Callable[[], Awaitable[T]], *, what: str, within: float = 30.0, interval: float = 0.1
) -> T:
    """Calls ``check`` every ``interval`` seconds until it returns a truthy value, and returns that
    value; raises ``AssertionError`` naming ``what`` and the last value after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


async def wait_until_steady(
    read: Callable[[], Awaitable[T]],
    *,
    what: str,
    steady_for: float,
    within: float = 30.0,
    interval: float = 0.1,
) -> T:
    """Reads a value every ``interval`` seconds until it has not changed for ``steady_for`` seconds,
    and returns it; for a count that stops moving once a change (a pause, a stop) took effect, where
    ``steady_for`` is longer than the period at which the count is reported. Raises
    ``AssertionError`` naming ``what`` if the value still changes after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    value = await read()
    since = loop.time()
    while loop.time() - since < steady_for:
        if loop.time() > deadline:
            raise AssertionError(f"{what} still changed after {within:g}s (last: {value!r})")
        await asyncio.sleep(interval)
        current = await read()
        if current != value:
            value, since = current, loop.time()
    return value
