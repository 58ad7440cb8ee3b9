"""``wait_until`` returns the first truthy value as soon as it appears, ``wait_until_steady`` a value once
it stopped changing; both fail naming what they waited for."""

from __future__ import annotations

import asyncio

import pytest

from heliosdb_streaming.testing.waits import wait_until, wait_until_steady


async def test_returns_the_first_truthy_value_without_waiting_longer() -> None:
    calls: list[int] = []

    async def third_call() -> list[int] | None:
        calls.append(len(calls))
        return calls if len(calls) == 3 else None

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await wait_until(third_call, what="the third call", interval=0.01) == [0, 1, 2]
    assert loop.time() - started < 1


async def test_times_out_naming_what_and_the_last_value() -> None:
    async def never() -> int:
        return 0

    with pytest.raises(AssertionError, match=r"timed out after 0.05s waiting for rows \(last: 0\)"):
        await wait_until(never, what="rows", within=0.05, interval=0.01)


async def test_steady_returns_the_value_once_it_stopped_changing() -> None:
    values = iter([1, 2, 3])

    async def count() -> int:
        return next(values, 3)

    assert await wait_until_steady(count, what="the count", steady_for=0.05, interval=0.01) == 3


async def test_steady_fails_while_the_value_keeps_changing() -> None:
    n = 0

    async def growing() -> int:
        nonlocal n
        n += 1
        return n

    with pytest.raises(AssertionError, match=r"the count still changed after 0\.1s"):
        await wait_until_steady(growing, what="the count", steady_for=0.05, within=0.1, interval=0.01)
