"""Fraud-style keyed process functions as a user writes them (the classes ``process`` steps name).

Per card: a running total and count (value state), payments per merchant (map state), the last
amounts (list state); an ``alert`` once the total passes ``LIMIT`` (once per session); and a
``session`` summary from an event-time timer once the card has been quiet for ``gap_ms``.
:func:`reference` computes the same output without the engine, for tests to compare with.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from heliosdb_streaming.functions import Context, KeyedProcessFunction, RuntimeContext

GAP_MS = 60_000
LIMIT = 1_000
RECENT = 3


class CardSessions(KeyedProcessFunction):
    gap_ms = GAP_MS

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
        self.quiet_at.update(ctx.timestamp + self.gap_ms)
        ctx.timer_service.register_event_time_timer(ctx.timestamp + self.gap_ms)
        if total > LIMIT and not self.alerted.value():
            self.alerted.update(True)
            yield self.alert(ctx.key, total, ctx.timestamp, recent, dict(self.merchants.items()))

    def on_timer(self, timestamp: int, ctx: Context) -> Iterator[dict[str, Any]]:
        yield self.session(
            ctx.key, self.total.value(), self.count.value(), dict(self.merchants.items()), timestamp
        )
        for state in (self.total, self.count, self.alerted, self.quiet_at, self.merchants, self.recent):
            state.clear()

    @staticmethod
    def alert(
        card: Any, total: float, at: int, recent: list[float], merchants: dict[str, int]
    ) -> dict[str, Any]:
        return {"kind": "alert", "card_id": card, "total": total, "at": at, "recent": recent}

    @staticmethod
    def session(card: Any, total: float, count: int, merchants: dict[str, int], ended: int) -> dict[str, Any]:
        return {
            "kind": "session",
            "card_id": card,
            "total": total,
            "count": count,
            "merchants": dict(sorted(merchants.items())),
            "ended": ended,
        }


class QuickSessions(CardSessions):
    """Sessions of datagen's cards (an event every few tens of ms each): flat rows of one shape, for a
    database table: ``kind, card_id, total, count, merchants`` (distinct merchants), ``at``."""

    gap_ms = 250

    @staticmethod
    def alert(
        card: Any, total: float, at: int, recent: list[float], merchants: dict[str, int]
    ) -> dict[str, Any]:
        return {
            "kind": "alert",
            "card_id": card,
            "total": total,
            "count": 0,
            "merchants": len(merchants),
            "at": at,
        }

    @staticmethod
    def session(card: Any, total: float, count: int, merchants: dict[str, int], ended: int) -> dict[str, Any]:
        return {
            "kind": "session",
            "card_id": card,
            "total": total,
            "count": count,
            "merchants": len(merchants),
            "at": ended,
        }


class LongSessions(QuickSessions):
    """``QuickSessions`` with a long gap (2000 s of event time), for input whose splits are read
    concurrently and regrouped by card: a card's session never ends early because another split's
    events move the watermark ahead of it (a split may lag the others by up to the gap)."""

    gap_ms = 2_000_000


class NotAProcessFunction:
    """A class that forgot to subclass KeyedProcessFunction (refused at submit)."""

    def process(self, event: dict[str, Any], ctx: Any) -> None:
        return None


def reference(events: list[dict[str, Any]], cls: type[CardSessions] = CardSessions) -> list[dict[str, Any]]:
    """What ``cls`` emits for the events of one split in order (no out-of-orderness), computed
    independently: a card's session ends once the watermark (latest time - 1) passes its last event
    plus the gap, checked after each event, and every session still open ends at the end of input.
    Sorted by (kind, card, time) so outputs compare as multisets."""
    out: list[dict[str, Any]] = []
    sessions: dict[Any, dict[str, Any]] = {}
    watermark = -(2**63)

    def end_due(wm: int) -> None:
        for card in [c for c, s in sessions.items() if s["quiet_at"] <= wm]:
            s = sessions.pop(card)
            out.append(cls.session(card, s["total"], s["count"], s["merchants"], s["quiet_at"]))

    for e in events:
        card = e["card_id"]
        s = sessions.setdefault(
            card, {"total": 0, "count": 0, "merchants": {}, "alerted": False, "recent": []}
        )
        s["total"] = round(s["total"] + e["amount"], 2)
        s["count"] += 1
        s["merchants"][e["merchant"]] = s["merchants"].get(e["merchant"], 0) + 1
        s["recent"] = [*s["recent"], e["amount"]][-RECENT:]
        s["quiet_at"] = e["timestamp"] + cls.gap_ms
        if s["total"] > LIMIT and not s["alerted"]:
            s["alerted"] = True
            out.append(cls.alert(card, s["total"], e["timestamp"], s["recent"], dict(s["merchants"])))
        if e["timestamp"] - 1 > watermark:
            watermark = e["timestamp"] - 1
            end_due(watermark)
    end_due(2**63 - 1)
    return sorted(out, key=lambda r: (r["kind"], repr(r["card_id"]), r.get("at", r.get("ended"))))
