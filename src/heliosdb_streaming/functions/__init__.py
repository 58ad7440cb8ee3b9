"""The API user code is written against: keyed process functions, their context, state and timers.

A pipeline step ``{"type": "process", "config": {"function": "package.module:Class", "key": ...}}``
runs a subclass of :class:`KeyedProcessFunction` once per task. This package only declares the
interface (as PyFlink's ``pyflink.datastream``); the engine implements it in
``heliosdb_streaming.runtime``, so user code imports nothing but this::

    from heliosdb_streaming.functions import KeyedProcessFunction

It sits between the job model and the runtime in the layers: it imports nothing else of the package.
"""

from __future__ import annotations

from heliosdb_streaming.functions.context import Context, RuntimeContext, TimeDomain, TimerService
from heliosdb_streaming.functions.process import KeyedProcessFunction
from heliosdb_streaming.functions.state import ListState, MapState, ValueState

__all__ = [
    "Context",
    "KeyedProcessFunction",
    "ListState",
    "MapState",
    "RuntimeContext",
    "TimeDomain",
    "TimerService",
    "ValueState",
]
