"""What a keyed process function sees of the engine: its context and the timer service."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Any

from heliosdb_streaming.functions.state import ListState, MapState, ValueState


class TimeDomain(StrEnum):
    """Which clock a timer follows: the watermark (event time) or the wall clock (processing time)."""

    EVENT_TIME = "event"
    PROCESSING_TIME = "processing"


class TimerService(ABC):
    """Registers and deletes timers of the current key; times are epoch milliseconds.

    A timer is one ``(key, time, domain)``: registering the same one twice fires it once. An
    event-time timer fires once the watermark reaches its time, and every pending one fires at the
    end of bounded input. A processing-time timer fires once the wall clock reaches its time (checked
    a few times a second while the job runs; pending ones do not fire at the end of bounded input).
    Timers are checkpointed with the task.
    """

    @abstractmethod
    def register_event_time_timer(self, timestamp: int) -> None:
        """Calls ``on_timer(timestamp, ctx)`` for the current key once the watermark reaches it."""

    @abstractmethod
    def delete_event_time_timer(self, timestamp: int) -> None:
        """Removes the current key's event-time timer at ``timestamp`` (no error if there is none)."""

    @abstractmethod
    def register_processing_time_timer(self, timestamp: int) -> None:
        """Calls ``on_timer(timestamp, ctx)`` for the current key once the wall clock reaches it."""

    @abstractmethod
    def delete_processing_time_timer(self, timestamp: int) -> None:
        """Removes the current key's processing-time timer at ``timestamp`` (no error if none)."""

    @abstractmethod
    def current_processing_time(self) -> int:
        """The wall clock, epoch milliseconds."""

    @abstractmethod
    def current_watermark(self) -> int:
        """The task's event-time watermark (``-2**63`` before the first event with a time)."""


class RuntimeContext(ABC):
    """What ``open`` gets: state is declared here, once per task, before any event.

    A state's ``name`` identifies it in checkpoints: keep it when you change the function, or its
    state starts empty after a restore. Names are unique within the function across all kinds.
    """

    @abstractmethod
    def value_state(self, name: str, default: Any = None) -> ValueState:
        """A value per key; ``value()`` gives ``default`` for a key that has none."""

    @abstractmethod
    def map_state(self, name: str) -> MapState:
        """A map per key."""

    @abstractmethod
    def list_state(self, name: str) -> ListState:
        """A list per key."""


class Context(RuntimeContext):
    """What ``process`` and ``on_timer`` get: the current key, times and the timer service.

    Attributes (read them, do not assign them):

    * ``key``: the key of the event or timer being handled (the step's ``key`` expression's value);
    * ``timestamp``: the event time of the event (its time field, epoch ms; ``None`` if it has none)
      or the time of the timer firing;
    * ``watermark``: the task's event-time watermark before this event;
    * ``time_domain``: in ``on_timer``, which clock fired the timer; ``None`` in ``process``;
    * ``timer_service``: a :class:`TimerService` for the current key.

    State handles declared in ``open`` are kept and used here; the context may also declare them.
    """

    key: Any = None
    timestamp: int | None = None
    watermark: int = -(2**63)
    time_domain: TimeDomain | None = None
    timer_service: TimerService
