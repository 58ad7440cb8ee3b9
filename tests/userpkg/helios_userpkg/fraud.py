"""A fraud-style keyed process function as a user writes one (a ``process`` step's class).

Per card: a running total and count (value state), payments per merchant (map state), the last
amounts (list state); an ``alert`` once the total passes ``LIMIT`` (once per session); and a
``session`` summary from an event-time timer once the card has been quiet for ``GAP_MS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from heliosdb_streaming.functions import Context, KeyedProcessFunction, RuntimeContext

GAP_MS = 60_000
LIMIT = 1_000
RECENT = 3


class CardSessions(KeyedProcessFunction):
    def open(self, ctx: RuntimeContext) -> None:
        self.total = ctx.value_state("total", default=0)
        self.count = ctx.value_state("count", default=0)
        self.alerted = ctx.value_state("alerted", default=False)
        self.quiet_at = ctx.value_state("quiet_at")
        self.merchants = ctx.map_state("merchants")
        self.recent = ctx.list_state("recent")

    def process(self, event: dict[str, Any], ctx: Context) -> Iterator[dict[str, Any]]:
        amount = event["amount"]
        total = round(self.total.value() + amount, 2)
        self.total.update(total)
        self.count.update(self.count.value() + 1)
        self.merchants.put(event["merchant"], self.merchants.get(event["merchant"], 0) + 1)
        recent = [*self.recent.get(), amount][-RECENT:]
        self.recent.update(recent)
        previous = self.quiet_at.value()
        if previous is not None:
            ctx.timer_service.delete_event_time_timer(previous)
        assert ctx.timestamp is not None, "events carry a timestamp"
        self.quiet_at.update(ctx.timestamp + GAP_MS)
        ctx.timer_service.register_event_time_timer(ctx.timestamp + GAP_MS)
        if total > LIMIT and not self.alerted.value():
            self.alerted.update(True)
            yield {"kind": "alert", "card_id": ctx.key, "total": total, "at": ctx.timestamp, "recent": recent}

    def on_timer(self, timestamp: int, ctx: Context) -> Iterator[dict[str, Any]]:
        yield {
            "kind": "session",
            "card_id": ctx.key,
            "total": self.total.value(),
            "count": self.count.value(),
            "merchants": dict(sorted(self.merchants.items())),
            "ended": timestamp,
        }
        for state in (self.total, self.count, self.alerted, self.quiet_at, self.merchants, self.recent):
            state.clear()


def reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``CardSessions`` emits for ``events`` of one task in order (with no out-of-orderness),
    computed independently: sessions split where the next event is ``GAP_MS`` or more after the
    watermark passed the quiet time. Sorted by (kind, card, time) so outputs compare as multisets."""
    out: list[dict[str, Any]] = []
    open_: dict[Any, dict[str, Any]] = {}
    watermark = -(2**63)

    def close_due(wm: int) -> None:
        for card in sorted(open_, key=lambda c: (open_[c]["quiet_at"], repr(c))):
            s = open_[card]
            if s["quiet_at"] <= wm:
                out.append(
                    {
                        "kind": "session",
                        "card_id": card,
                        "total": s["total"],
                        "count": s["count"],
                        "merchants": dict(sorted(s["merchants"].items())),
                        "ended": s["quiet_at"],
                    }
                )
                del open_[card]

    for e in events:
        card = e["card_id"]
        s = open_.setdefault(card, {"total": 0, "count": 0, "merchants": {}, "alerted": False, "recent": []})
        s["total"] = round(s["total"] + e["amount"], 2)
        s["count"] += 1
        s["merchants"][e["merchant"]] = s["merchants"].get(e["merchant"], 0) + 1
        s["recent"] = [*s["recent"], e["amount"]][-RECENT:]
        s["quiet_at"] = e["timestamp"] + GAP_MS
        if s["total"] > LIMIT and not s["alerted"]:
            s["alerted"] = True
            out.append(
                {
                    "kind": "alert",
                    "card_id": card,
                    "total": s["total"],
                    "at": e["timestamp"],
                    "recent": s["recent"],
                }
            )
        if e["timestamp"] - 1 > watermark:
            watermark = e["timestamp"] - 1
            close_due(watermark)
    close_due(2**63 - 1)
    return sorted(out, key=lambda r: (r["kind"], repr(r["card_id"]), r.get("at", r.get("ended"))))


class NotAProcessFunction:
    """A class that forgot to subclass KeyedProcessFunction (refused at submit)."""

    def process(self, event: dict[str, Any], ctx: Any) -> None:
        return None
