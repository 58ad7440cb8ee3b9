"""The base class of keyed process functions (Flink's ``KeyedProcessFunction``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from heliosdb_streaming.functions.context import Context, RuntimeContext

Output = Iterable[dict[str, Any]] | None
"""What ``process`` and ``on_timer`` return: ``None`` or records (a list, a generator...)."""


class KeyedProcessFunction:
    """Subclass it and name it in a ``process`` step as ``"package.module:Class"``.

    The engine makes one instance per task (the class is called without arguments), calls ``open``
    once, then ``process`` for each event in order and ``on_timer`` for each timer that fires, and
    ``close`` when the task ends. Everything the function must remember across events goes into state
    declared in ``open`` (attributes of ``self`` are not checkpointed and are not per key). Output
    records are dicts; returning anything else for a record is an error of that record, handled by
    the job's ``on_error`` like an exception raised here.

    Example (an alert when a card spends over 1000 within a minute of its first payment)::

        class Spend(KeyedProcessFunction):
            def open(self, ctx):
                self.total = ctx.value_state("total", default=0)

            def process(self, event, ctx):
                if self.total.value() == 0:
                    ctx.timer_service.register_event_time_timer(ctx.timestamp + 60_000)
                self.total.update(self.total.value() + event["amount"])
                if self.total.value() > 1000:
                    yield {"card_id": ctx.key, "total": self.total.value()}

            def on_timer(self, timestamp, ctx):
                self.total.clear()
    """

    def open(self, ctx: RuntimeContext) -> None:
        """Declares state (``ctx.value_state(...)`` etc.); called once per task before any event."""

    def process(self, event: dict[str, Any], ctx: Context) -> Output:
        """Handles one event of the key ``ctx.key``; returns ``None`` or the records to emit."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement process(self, event, ctx)")

    def on_timer(self, timestamp: int, ctx: Context) -> Output:
        """Handles a timer of the key ``ctx.key`` at ``timestamp``; returns ``None`` or records."""
        return None

    def close(self) -> None:
        """Called once when the task ends (not after a crash): release what ``open`` acquired."""
