"""Complex event processing: MATCH_RECOGNIZE-style sequence patterns per key.

Pattern syntax: whitespace-separated variables (identifiers), each optionally followed by one
quantifier ``?``, ``*``, ``+``, ``{n}``, ``{n,}`` or ``{n,m}``. No groups or alternation. A variable
may appear more than once. A variable without a condition in ``define`` matches any event. The
parser is the model's (:mod:`heliosdb_streaming.model.patterns`, used at submit too); this module runs
the parsed pattern.

Matching semantics, per key, over the key's events in arrival order (assumed to be event-time
order within the key):

* A match is a run of events ``e_p .. e_q`` assigned in order to the pattern's variables within
  their quantifier bounds, each event satisfying its variable's condition, and (with ``window_ms``)
  ``time(e_q) - time(e_p) <= window_ms``. The first event of a match is always matched.
* ``strict`` contiguity: the matched events are consecutive events of the key. ``relaxed``
  (skip till next match, Flink's ``followedBy``): events in between are skipped, but only events
  that could not be taken in the current state: an event satisfying a condition the partial match
  may take next *is* taken (one branch per variable it can be taken as).
* Leftmost-longest: the match reported is the one starting at the earliest possible event, and
  among those the one ending at the latest event (greedy quantifiers). For ``relaxed`` ties are
  broken by more events, then by the earliest events.
* ``skip_past_last_row``: the next match starts after the last event of the reported match;
  ``skip_to_next_row``: after the first one (matches may overlap).
* Streaming consequence: a match is reported once it can no longer grow and no earlier start can
  still match: when the next event of the key fails to extend it (a pattern ending in a greedy
  ``+``/``*``/``{n,}``/``{n,m}`` variable waits for that event), when an event of the key arrives
  more than ``window_ms`` after the match's first event, when the task's watermark (the largest
  event time this task has seen) passes first event + ``window_ms`` (checked after each batch;
  exact when the task's input is in event-time order across keys), or at ``on_end``. At
  ``on_end`` complete matches are reported and incomplete partial matches discarded. In
  ``relaxed`` mode without a window a partial match only ends at ``on_end``: a greedy pattern
  end waits for it, and an incomplete partial match holds back the key's later matches (leftmost
  first) until then, so ``relaxed`` is meant to be used with a window.

Output per match: ``{"key", "pattern", "start_time", "end_time", "event_count", "events"}``.

State: one store entry per key with a partial match, ``k|<repr(key)>`` ->
``[key, next_index, buffered indexes, buffered times, buffered events, starts]`` where each start
is ``[first_index, first_time, runs, best]``: the automaton states of its live partial matches
(``strict``: state ids; ``relaxed``: ``[state id, matched indexes]``) and its longest complete
match so far. Runs with the same state are merged, so the entry is bounded by the pattern size
times the number of events within the window. Keys with nothing pending have no entry.
``meta`` holds the watermark. In a later stage of a job (``external_watermark``: the input
interleaves several upstream tasks) events are buffered, one entry ``b|<seq>`` -> ``[time, seq,
event]`` each, until the watermark (the minimum over the upstream tasks, given by
:meth:`CepTransformation.advance_watermark`) passes them, then matched in event-time order (ties in
arrival order), as Flink's CEP does; an event at or below the watermark on arrival is late, dropped
and counted. Entries are cached per call (copied on load) and written back at
the end of each call; the expiry heap is derived and rebuilt by :meth:`CepTransformation.restore`.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, Literal

from heliosdb_streaming.model.patterns import Pattern
from heliosdb_streaming.runtime.contracts import Batch, Record, StateStore
from heliosdb_streaming.runtime.eventtime import MIN_WATERMARK, event_time_field_value

_MISSING: Any = object()
_ABSENT: Any = object()
_META = "meta"
_PREFIX = "k|"
_BUFFER = "b|"
_StepResult = tuple[list[Any], bool] | None


class _Automaton:
    """The pattern as an NFA over states ``(element, count so far)``; unbounded counts are capped."""

    def __init__(self, pattern: Pattern, define: dict[str, Callable[[Record], bool]]) -> None:
        elements = pattern.elements
        k = len(elements)
        slots: dict[str, int] = {}
        self.preds: list[Callable[[Record], bool] | None] = []
        elem_slot: list[int] = []
        for e in elements:
            if e.name not in slots:
                slots[e.name] = len(self.preds)
                self.preds.append(define.get(e.name))
            elem_slot.append(slots[e.name])
        caps = [e.max if e.max is not None else max(e.min, 1) for e in elements]
        offsets: list[int] = []
        total = 0
        for cap in caps:
            offsets.append(total)
            total += cap

        def sid(i: int, c: int) -> int:
            return offsets[i] + c - 1

        def forward(i: int) -> list[tuple[int, int]]:
            out: list[tuple[int, int]] = []
            for j in range(i + 1, k):
                out.append((elem_slot[j], sid(j, 1)))
                if elements[j].min > 0:
                    break
            return out

        self.initial = forward(-1)
        self.first_preds = [self.preds[slot] for slot, _ in self.initial]
        self.trans: list[list[tuple[int, int]]] = []
        self.accepting: list[bool] = []
        for i, e in enumerate(elements):
            for c in range(1, caps[i] + 1):
                t: list[tuple[int, int]] = []
                if e.max is None:
                    t.append((elem_slot[i], sid(i, min(c + 1, caps[i]))))
                elif c < e.max:
                    t.append((elem_slot[i], sid(i, c + 1)))
                if c >= e.min:
                    t += forward(i)
                self.trans.append(t)
                self.accepting.append(c >= e.min and all(x.min == 0 for x in elements[i + 1 :]))


def _better(a: list[int], b: list[int]) -> bool:
    """Preference between two relaxed runs in the same state: more events, then earlier events."""
    return len(a) > len(b) or (len(a) == len(b) and a < b)


class CepTransformation:
    """Keyed pattern matching; see the module docstring for the exact semantics."""

    def __init__(
        self,
        store: StateStore,
        *,
        pattern: Pattern,
        pattern_text: str,
        define: dict[str, Callable[[Record], bool]],
        key_fn: Callable[[Record], Any] | None = None,
        window_ms: int | None = None,
        time_field: str = "timestamp",
        contiguity: Literal["strict", "relaxed"] = "strict",
        after_match: Literal["skip_past_last_row", "skip_to_next_row"] = "skip_past_last_row",
        name: str = "cep",
        external_watermark: bool = False,
    ) -> None:
        if contiguity not in ("strict", "relaxed"):
            raise ValueError(f"unknown contiguity {contiguity!r}: use strict or relaxed")
        if after_match not in ("skip_past_last_row", "skip_to_next_row"):
            raise ValueError(
                f"unknown after_match {after_match!r}: use skip_past_last_row or skip_to_next_row"
            )
        if window_ms is not None and window_ms <= 0:
            raise ValueError("window_ms must be positive")
        unknown = sorted(set(define) - set(pattern.variables))
        if unknown:
            raise ValueError(f"define names variables not in the pattern: {', '.join(unknown)}")
        self.name = name
        self.pattern = pattern
        self.pattern_text = pattern_text
        self.time_field = time_field
        self.window_ms = window_ms
        self.contiguity = contiguity
        self.after_match = after_match
        self.late_dropped = 0  # only in external-watermark mode: events behind the watermark
        self.external_watermark = external_watermark
        self._buffer: list[tuple[int, int, Record]] = []  # (time, seq, event): a heap
        self._seq = 0
        self._nfa = _Automaton(pattern, define)
        self._key_fn = key_fn
        self._strict = contiguity == "strict"
        self._skip_past = after_match == "skip_past_last_row"
        self._store = store
        self._hot: dict[str, Any] = {}
        self._expiry: list[tuple[int, str]] = []
        self._wm = MIN_WATERMARK
        self._stored_wm = MIN_WATERMARK
        self._stored_late = 0
        self.restore()

    # ------------------------------------------------------------------------------ state

    def restore(self) -> None:
        """Rebuilds the in-memory expiry index from the store (after loading a checkpoint)."""
        self._hot.clear()
        meta = self._store.get(_META)
        self._wm = self._stored_wm = MIN_WATERMARK if meta is None else int(meta[0])
        self.late_dropped = self._stored_late = 0
        self._expiry = []
        self._buffer = [(int(t), int(q), r) for _, (t, q, r) in self._store.items(_BUFFER)]
        heapq.heapify(self._buffer)
        self._seq = max((q for _, q, _ in self._buffer), default=-1) + 1
        if meta is not None and len(meta) > 1:
            self.late_dropped = int(meta[1])
        if self.window_ms is not None:
            for sk, state in self._store.items(_PREFIX):
                kstr = sk[len(_PREFIX) :]
                for start in state[5]:
                    if start[2]:
                        self._expiry.append((start[1] + self.window_ms, kstr))
            heapq.heapify(self._expiry)

    def _load(self, kstr: str) -> Any:
        state = self._hot.get(kstr, _MISSING)
        if state is _MISSING:
            stored = self._store.get(_PREFIX + kstr)
            if stored is None:
                state = _ABSENT
            else:
                key, n, ei, et, er, starts = stored
                state = [key, n, list(ei), list(et), list(er), list(starts)]
            self._hot[kstr] = state
        return state

    def _flush(self) -> None:
        store = self._store
        for kstr, state in self._hot.items():
            if state is None:
                store.delete(_PREFIX + kstr)
            elif state is not _ABSENT:
                store.put(_PREFIX + kstr, state)
        self._hot.clear()
        if self._wm != self._stored_wm or self.late_dropped != self._stored_late:
            self._stored_wm = self._wm
            self._stored_late = self.late_dropped
            store.put(_META, [self._wm, self.late_dropped])

    # ------------------------------------------------------------------------------ data path

    @property
    def watermark(self) -> int:
        return self._wm

    def process(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        if self.external_watermark:
            self._hold(records, errors)
            return []
        return self._match_batch(records, errors)

    def _hold(self, records: Batch, errors: list[tuple[Record, Exception]]) -> None:
        """External-watermark mode: buffers events until the watermark passes them (validated now)."""
        key_fn = self._key_fn
        store = self._store
        for record in records:
            try:
                ts = record.get(self.time_field)
                if type(ts) is not int:
                    ts = self._parse_time(ts)
                if key_fn is not None:
                    key_fn(record)
            except Exception as e:
                errors.append((record, e))
                continue
            if ts <= self._wm:
                self.late_dropped += 1
                continue
            seq = self._seq
            self._seq += 1
            heapq.heappush(self._buffer, (ts, seq, record))
            store.put(f"{_BUFFER}{seq:016d}", [ts, seq, record])
        self._flush()

    def advance_watermark(self, watermark: int, errors: list[tuple[Record, Exception]]) -> Batch:
        """External-watermark mode: matches the buffered events the watermark passed, in event-time
        order, then ends the partial matches whose window it passed."""
        if watermark <= self._wm:
            return []
        buffer = self._buffer
        expiry = self._expiry
        if (not buffer or buffer[0][0] > watermark) and (
            self.window_ms is None or not expiry or expiry[0][0] >= watermark
        ):
            self._wm = watermark  # nothing due: no write (the stage sets it again after a restore)
            return []
        due: Batch = []
        while buffer and buffer[0][0] <= watermark:
            _, seq, record = heapq.heappop(buffer)
            self._store.delete(f"{_BUFFER}{seq:016d}")
            due.append(record)
        out = self._match_batch(due, errors) if due else []
        self._wm = watermark
        if self.window_ms is not None:
            self._expire(watermark, out)
        self._flush()
        return out

    def _match_batch(self, records: Batch, errors: list[tuple[Record, Exception]]) -> Batch:
        out: Batch = []
        time_field = self.time_field
        key_fn = self._key_fn
        step = self._step_strict if self._strict else self._step_relaxed
        hot = self._hot
        first_preds = self._nfa.first_preds
        wm = self._wm
        for record in records:
            try:
                ts = record.get(time_field)
                if type(ts) is not int:
                    ts = self._parse_time(ts)
                key = key_fn(record) if key_fn is not None else None
                kstr = repr(key)
                state = hot.get(kstr, _MISSING)
                if state is _MISSING:
                    state = self._load(kstr)
                if state is _ABSENT or state is None:
                    # fast path for a key with nothing pending: does the event start anything?
                    for pred in first_preds:
                        if pred is None or pred(record):
                            break
                    else:
                        if ts > wm:
                            wm = ts
                        continue
                    pending = False
                    result = step((), 0, record, ts, kstr)
                else:
                    pending = True
                    result = step(state[5], state[1], record, ts, kstr)
            except Exception as e:
                errors.append((record, e))
                continue
            if ts > wm:
                wm = ts
            if result is None:
                continue
            starts, taken = result
            if not pending:
                state = [key, 0, [], [], [], []]
                self._hot[kstr] = state
            if taken:
                state[2].append(state[1])
                state[3].append(ts)
                state[4].append(record)
            state[5] = starts
            state[1] += 1
            self._settle(kstr, state, out)
        self._wm = wm
        if self.window_ms is not None:
            self._expire(wm, out)
        self._flush()
        return out

    def _parse_time(self, value: Any) -> int:
        return event_time_field_value(value, self.time_field)

    def _step_strict(self, starts: Any, n: int, record: Record, ts: int, kstr: str) -> _StepResult:
        """``(starts after event n, whether a partial match took the event)``, or None when nothing
        was pending and the event starts nothing.

        Pure except for the expiry index: the caller commits, so a raising condition leaves the
        state intact.
        """
        nfa = self._nfa
        preds = nfa.preds
        trans = nfa.trans
        accepting = nfa.accepting
        window = self.window_ms
        memo: dict[int, bool] = {}
        new_starts: list[Any] = []
        taken = False
        for st in starts:
            p, pts, sids, best = st
            if not sids:
                new_starts.append(st)  # finished, waiting for an earlier start to be decided
                continue
            if window is not None and ts - pts > window:
                if best is not None:
                    new_starts.append([p, pts, [], best])
                continue
            nsids: list[int] = []
            nbest = best
            for sid in sids:
                for slot, target in trans[sid]:
                    ok = memo.get(slot)
                    if ok is None:
                        pred = preds[slot]
                        ok = memo[slot] = True if pred is None else bool(pred(record))
                    if ok and target not in nsids:
                        nsids.append(target)
                        if accepting[target]:
                            nbest = n
            if nsids:
                taken = True
                live = [t for t in nsids if trans[t]]
                new_starts.append([p, pts, live, nbest])
            elif best is not None:
                new_starts.append([p, pts, [], best])
        nsids = []
        nbest = None
        for slot, target in nfa.initial:
            ok = memo.get(slot)
            if ok is None:
                pred = preds[slot]
                ok = memo[slot] = True if pred is None else bool(pred(record))
            if ok and target not in nsids:
                nsids.append(target)
                if accepting[target]:
                    nbest = n
        if nsids:
            taken = True
            new_starts.append([n, ts, [t for t in nsids if trans[t]], nbest])
            if window is not None:
                heapq.heappush(self._expiry, (ts + window, kstr))
        if not taken and not starts:
            return None
        return new_starts, taken

    def _step_relaxed(self, starts: Any, n: int, record: Record, ts: int, kstr: str) -> _StepResult:
        """Like :meth:`_step_strict` for relaxed contiguity: runs carry their matched indexes."""
        nfa = self._nfa
        preds = nfa.preds
        trans = nfa.trans
        accepting = nfa.accepting
        window = self.window_ms
        memo: dict[int, bool] = {}
        new_starts: list[Any] = []
        taken = False
        for st in starts:
            p, pts, runs, best = st
            if not runs:
                new_starts.append(st)
                continue
            if window is not None and ts - pts > window:
                if best is not None:
                    new_starts.append([p, pts, [], best])
                continue
            # fast path: no run can take the event, so every run skips it and the start is unchanged
            for sid, _ in runs:
                for slot, _ in trans[sid]:
                    ok = memo.get(slot)
                    if ok is None:
                        pred = preds[slot]
                        ok = memo[slot] = True if pred is None else bool(pred(record))
                    if ok:
                        break
                else:
                    continue
                break
            else:
                new_starts.append(st)
                continue
            nruns: dict[int, list[int]] = {}
            nbest = best
            for sid, idxs in runs:
                took = False
                for slot, target in trans[sid]:
                    ok = memo.get(slot)
                    if ok is None:
                        pred = preds[slot]
                        ok = memo[slot] = True if pred is None else bool(pred(record))
                    if ok:
                        took = taken = True
                        cand = [*idxs, n]
                        cur = nruns.get(target)
                        if cur is None or _better(cand, cur):
                            nruns[target] = cand
                        if accepting[target] and (nbest is None or nbest[-1] != n or _better(cand, nbest)):
                            nbest = cand
                if not took:
                    cur = nruns.get(sid)
                    if cur is None or _better(idxs, cur):
                        nruns[sid] = idxs
            live = [[t, idxs] for t, idxs in nruns.items() if trans[t]]
            if live or nbest is not None:
                new_starts.append([p, pts, live, nbest])
        init: dict[int, list[int]] = {}
        nbest = None
        for slot, target in nfa.initial:
            ok = memo.get(slot)
            if ok is None:
                pred = preds[slot]
                ok = memo[slot] = True if pred is None else bool(pred(record))
            if ok:
                init[target] = [n]
                if accepting[target]:
                    nbest = [n]
        if init:
            taken = True
            new_starts.append([n, ts, [[t, idxs] for t, idxs in init.items() if trans[t]], nbest])
            if window is not None:
                heapq.heappush(self._expiry, (ts + window, kstr))
        if not taken and not starts:
            return None
        return new_starts, taken

    def _settle(self, kstr: str, state: list[Any], out: Batch) -> None:
        """Reports decided matches (leftmost first), drops what they skip, trims the buffer."""
        starts = state[5]
        while starts and not starts[0][2]:
            st = starts.pop(0)
            if st[3] is not None:
                out.append(self._match(state, st))
                if self._skip_past:
                    last = st[3] if self._strict else st[3][-1]
                    starts = state[5] = [s for s in starts if s[0] > last]
        if not starts:
            self._hot[kstr] = None
            return
        first = starts[0][0]
        ei = state[2]
        if ei and ei[0] < first:
            cut = bisect_left(ei, first)
            del ei[:cut]
            del state[3][:cut]
            del state[4][:cut]

    def _match(self, state: list[Any], st: list[Any]) -> Record:
        ei, et, er = state[2], state[3], state[4]
        if self._strict:
            lo = bisect_left(ei, st[0])
            hi = lo + st[3] - st[0] + 1
            events = er[lo:hi]
            start_time, end_time = et[lo], et[hi - 1]
        else:
            positions = [bisect_left(ei, i) for i in st[3]]
            events = [er[k] for k in positions]
            start_time, end_time = et[positions[0]], et[positions[-1]]
        return {
            "key": state[0],
            "pattern": self.pattern_text,
            "start_time": start_time,
            "end_time": end_time,
            "event_count": len(events),
            "events": events,
        }

    def _expire(self, wm: int, out: Batch) -> None:
        """Ends partial matches whose window the watermark has passed (first time + window < wm)."""
        window = self.window_ms
        assert window is not None
        heap = self._expiry
        while heap and heap[0][0] < wm:
            _, kstr = heapq.heappop(heap)
            state = self._load(kstr)
            if state is _ABSENT or state is None:
                continue
            starts = state[5]
            if not any(st[2] and st[1] + window < wm for st in starts):
                continue
            state[5] = [
                [st[0], st[1], [], st[3]] if st[2] and st[1] + window < wm else st
                for st in starts
                if not (st[2] and st[1] + window < wm and st[3] is None)
            ]
            self._settle(kstr, state, out)

    def on_time(self, now_ms: int) -> Batch:
        """CEP works on event time only: windows expire by the watermark, not the wall clock."""
        return []

    def on_end(self) -> Batch:
        """Reports every complete match still pending and discards incomplete partial matches."""
        out: Batch = []
        if self._buffer:  # external-watermark mode: what was held back is matched first
            due = [record for _, _, record in sorted(self._buffer)]
            for _, seq, _ in self._buffer:
                self._store.delete(f"{_BUFFER}{seq:016d}")
            self._buffer = []
            out = self._match_batch(due, [])
        kstrs = {k[len(_PREFIX) :] for k, _ in self._store.items(_PREFIX)}
        kstrs.update(k for k, v in self._hot.items() if v is not _ABSENT and v is not None)
        for kstr in sorted(kstrs):
            state = self._load(kstr)
            if state is _ABSENT or state is None:
                continue
            state[5] = [[st[0], st[1], [], st[3]] for st in state[5] if st[3] is not None]
            self._settle(kstr, state, out)
        self._expiry = []
        self._flush()
        return out
