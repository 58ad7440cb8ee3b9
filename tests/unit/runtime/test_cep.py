from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heliosdb_streaming.model.patterns import Pattern, PatternError, parse_pattern
from heliosdb_streaming.runtime.contracts import Record
from heliosdb_streaming.runtime.state.memory import MemoryStateStore
from heliosdb_streaming.runtime.transformations.cep import CepTransformation

Errors = list[tuple[Record, Exception]]
Pred = Callable[[Record], bool]

# ---------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A", [("A", 1, 1)]),
        ("A B+ C", [("A", 1, 1), ("B", 1, None), ("C", 1, 1)]),
        ("  big_tx  small_tx*\tend? ", [("big_tx", 1, 1), ("small_tx", 0, None), ("end", 0, 1)]),
        ("A{3} B{2,} C{1,4} D{0,1}", [("A", 3, 3), ("B", 2, None), ("C", 1, 4), ("D", 0, 1)]),
        ("A{ 2 , 3 }", [("A", 2, 3)]),
        ("A +", [("A", 1, None)]),
        ("A* B", [("A", 0, None), ("B", 1, 1)]),
        ("A B A", [("A", 1, 1), ("B", 1, 1), ("A", 1, 1)]),
        ("A{0,} B?C", None),  # 'B?C': quantifier followed directly by the next variable
    ],
)
def test_parse_pattern(text: str, expected: list[tuple[str, int, int | None]] | None) -> None:
    pattern = parse_pattern(text)
    if expected is None:
        assert pattern.variables == ["A", "B", "C"]
        return
    assert [(e.name, e.min, e.max) for e in pattern.elements] == expected
    assert pattern.variables == [name for name, _, _ in expected]
    assert pattern.bounds == [(lo, hi) for _, lo, hi in expected]
    assert parse_pattern(str(pattern)) == pattern


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("", 0, "empty"),
        ("   ", 0, "empty"),
        ("A*", 0, "empty sequence"),
        ("A? B*", 0, "empty sequence"),
        ("A{0,3} B{0,}", 0, "empty sequence"),
        ("A{3,1}", 1, "minimum is larger"),
        ("A{0}", 1, "maximum must be at least 1"),
        ("A{0,0} B", 1, "maximum must be at least 1"),
        ("A{}", 1, "invalid quantifier"),
        ("A{,2}", 1, "invalid quantifier"),
        ("A{x}", 1, "invalid quantifier"),
        ("A{2", 1, "invalid quantifier"),
        ("A+?", 2, "reluctant"),
        ("A+*", 2, "second quantifier"),
        ("A ++", 3, "second quantifier"),
        ("+A", 0, "must follow a variable"),
        ("A (B C)", 2, "not supported"),
        ("A | B", 2, "not supported"),
        ("A B-", 3, "unexpected '-'"),
        ("A 1B", 2, "expected a variable name"),
        ("A{99999}", 1, "not supported"),
    ],
)
def test_parse_pattern_rejects(text: str, position: int, message: str) -> None:
    with pytest.raises(PatternError) as info:
        parse_pattern(text)
    assert info.value.position == position
    assert message in str(info.value)
    assert f"position {position}" in str(info.value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------- helpers


def make(
    pattern: str,
    define: dict[str, Pred],
    store: MemoryStateStore | None = None,
    **kw: Any,
) -> CepTransformation:
    params: dict[str, Any] = {"key_fn": lambda r: r["card"], "window_ms": None}
    params.update(kw)
    parsed = parse_pattern(pattern)
    # the shared ABC conditions: keep only the variables the pattern uses
    define = {name: pred for name, pred in define.items() if name in parsed.variables or name not in ABC}
    return CepTransformation(
        store if store is not None else MemoryStateStore(),
        pattern=parsed,
        pattern_text=pattern,
        define=define,
        **params,
    )


def letters(text: str, card: str = "c1", t0: int = 0, step: int = 1000) -> list[Record]:
    """One event per letter: ``{"t": letter, "timestamp": ..., "card": ..., "i": position}``."""
    return [{"t": ch, "timestamp": t0 + i * step, "card": card, "i": i} for i, ch in enumerate(text)]


def is_(letter: str) -> Pred:
    return lambda r: bool(r["t"] == letter)


ABC = {"A": is_("a"), "B": is_("b"), "C": is_("c")}


def matched(out: list[Record]) -> list[str]:
    return ["".join(e["t"] for e in m["events"]) for m in out]


def positions(out: list[Record]) -> list[list[int]]:
    return [[e["i"] for e in m["events"]] for m in out]


def run(cep: CepTransformation, records: list[Record], errors: Errors | None = None) -> list[Record]:
    return cep.process(records, errors if errors is not None else []) + cep.on_end()


# ---------------------------------------------------------------------------------------- behaviour


def test_fraud_pattern_card_testing_then_big_purchase() -> None:
    define = {
        "A": lambda r: r["amount"] < 1,
        "B": lambda r: r["amount"] < 10,
        "C": lambda r: r["amount"] >= 500,
    }
    amounts = [25, 0.5, 1, 2, 3, 900, 40, 0.3, 2, 50, 700]
    records = [{"card": "c1", "timestamp": 1000 * i, "amount": a} for i, a in enumerate(amounts)]
    cep = make("A B+ C", define, window_ms=60_000)
    errors: Errors = []
    out = cep.process(records, errors)
    assert errors == []
    assert len(out) == 1
    assert out[0] == {
        "key": "c1",
        "pattern": "A B+ C",
        "start_time": 1000,
        "end_time": 5000,
        "event_count": 5,
        "events": records[1:6],
    }
    assert cep.on_end() == []
    relaxed = make("A B+ C", define, window_ms=60_000, contiguity="relaxed")
    out = run(relaxed, records)
    # the 50 between 2 and 700 is skipped: it is neither B nor C
    assert [[e["amount"] for e in m["events"]] for m in out] == [[0.5, 1, 2, 3, 900], [0.3, 2, 700]]


def test_matches_are_emitted_as_soon_as_decided() -> None:
    cep = make("A B+ C", ABC)
    assert matched(cep.process(letters("xab"), [])) == []
    assert matched(cep.process(letters("bc", t0=3000), [])) == ["abbc"]
    # the state of the key is gone once nothing is pending
    assert [k for k, _ in cep._store.items("k|")] == []


def test_greedy_end_waits_for_the_next_event_of_the_key() -> None:
    cep = make("A B+", ABC)
    assert cep.process(letters("abb"), []) == []
    assert cep.process(letters("x", card="other", t0=5000), []) == []  # other keys do not decide it
    assert matched(cep.process(letters("x", t0=5000), [])) == ["abb"]
    cep = make("A B+", ABC)
    assert cep.process(letters("abb"), []) == []
    assert matched(cep.on_end()) == ["abb"]


def test_on_end_discards_incomplete_partial_matches() -> None:
    cep = make("A B+ C", ABC)
    assert cep.process(letters("abbb"), []) == []
    assert cep.on_end() == []
    assert [k for k, _ in cep._store.items("k|")] == []


def test_window_expiry_by_events_of_the_key() -> None:
    cep = make("A B C", ABC, window_ms=2000)
    assert matched(run(cep, letters("abc"))) == ["abc"]  # 0 -> 2000: exactly the window
    cep = make("A B C", ABC, window_ms=1999)
    assert matched(run(cep, letters("abc"))) == []
    cep = make("A B+", ABC, window_ms=2500)
    # start 'a' at 0: the b at 3000 is beyond the window, so 'abb' is complete and reported then
    out = cep.process(letters("abbb"), [])
    assert matched(out) == ["abb"]
    assert out[0]["end_time"] == 2000


def test_window_expiry_by_watermark() -> None:
    cep = make("A B+", ABC, window_ms=5000)
    assert cep.process(letters("ab"), []) == []
    assert cep.process(letters("x", card="other", t0=5000), []) == []  # watermark 5000: 0 + 5000 fits
    out = cep.process(letters("x", card="other", t0=5001), [])  # watermark passed the window
    assert matched(out) == ["ab"]
    assert cep.on_end() == []
    # a watermark exactly at first + window still lets an event of the key at that time in
    cep = make("A B+", ABC, window_ms=5000)
    assert cep.process(letters("ab"), []) == []
    assert cep.process(letters("x", card="other", t0=5000), []) == []
    assert cep.process(letters("b", t0=5000), []) == []
    assert matched(cep.on_end()) == ["abb"]
    # an incomplete partial match just disappears
    cep = make("A B C", ABC, window_ms=5000)
    cep.process(letters("ab"), [])
    assert cep.process(letters("x", card="other", t0=9000), []) == []
    assert [k for k, _ in cep._store.items("k|")] == []


def test_strict_vs_relaxed() -> None:
    text = "axbxc"
    assert run(make("A B C", ABC), letters(text)) == []
    assert matched(run(make("A B C", ABC, contiguity="relaxed"), letters(text))) == ["abc"]
    # relaxed does not skip an event it can take: the second b ends the B+ loop only at c
    assert matched(run(make("A B+ C", ABC, contiguity="relaxed"), letters("axbxbyc"))) == ["abbc"]
    # ... nor skip a 'c' to reach a later one
    out = run(make("A B C", ABC, contiguity="relaxed"), letters("abcc"))
    assert positions(out) == [[0, 1, 2]]


def test_after_match_skip_modes() -> None:
    define = {"A": is_("a"), "B": is_("b")}
    past = run(make("A+ B", define), letters("aaab"))
    assert positions(past) == [[0, 1, 2, 3]]
    nxt = run(make("A+ B", define, after_match="skip_to_next_row"), letters("aaab"))
    assert positions(nxt) == [[0, 1, 2, 3], [1, 2, 3], [2, 3]]
    relaxed = run(make("A B", define, after_match="skip_to_next_row", contiguity="relaxed"), letters("aab"))
    assert positions(relaxed) == [[0, 2], [1, 2]]
    relaxed_past = run(make("A B", define, contiguity="relaxed"), letters("aabab"))
    assert positions(relaxed_past) == [[0, 2], [3, 4]]


def test_bounded_quantifiers() -> None:
    out = run(make("A{2,3} B", ABC), letters("aaaab"))
    assert positions(out) == [[1, 2, 3, 4]]
    out = run(make("A{2} B", ABC), letters("aab aaab ab"))
    assert positions(out) == [[0, 1, 2], [5, 6, 7]]
    out = run(make("A{2,} B", ABC), letters("aaaaab"))
    assert positions(out) == [[0, 1, 2, 3, 4, 5]]
    # greedy bounded end: 'a a a' is the longest, the 4th 'a' starts the next match
    out = run(make("A{1,3}", ABC), letters("aaaa"))
    assert positions(out) == [[0, 1, 2], [3]]


def test_optional_variable() -> None:
    cep = make("A B? C", ABC)
    assert matched(run(cep, letters("ac abc abbc"))) == ["ac", "abc"]
    out = run(make("A B?", ABC), letters("abab"))
    assert matched(out) == ["ab", "ab"]
    out = run(make("A C?", ABC), letters("aab"))
    assert positions(out) == [[0], [1]]


def test_undefined_variable_matches_anything() -> None:
    cep = make("A X C", {"A": is_("a"), "C": is_("c")})
    assert matched(run(cep, letters("abcaxc aac"))) == ["abc", "axc", "aac"]
    out = run(make("A X+", {"A": is_("a")}), letters("abc"))
    assert matched(out) == ["abc"]


def test_leftmost_longest_with_overlapping_conditions() -> None:
    define = {"A": lambda r: r["t"] in "ab", "B": is_("b")}
    # start 0 ('a'): A+ then B: longest ends at the last b
    assert positions(run(make("A+ B", define), letters("abab"))) == [[0, 1, 2, 3]]
    assert positions(run(make("A+ B", define), letters("abbx"))) == [[0, 1, 2]]


def test_keys_are_independent() -> None:
    records = [
        {"t": "a", "timestamp": 0, "card": "k1", "i": 0},
        {"t": "a", "timestamp": 1, "card": "k2", "i": 1},
        {"t": "b", "timestamp": 2, "card": "k1", "i": 2},
        {"t": "x", "timestamp": 3, "card": "k2", "i": 3},
        {"t": "b", "timestamp": 4, "card": "k2", "i": 4},
    ]
    out = run(make("A B", ABC), records)
    assert [(m["key"], [e["i"] for e in m["events"]]) for m in out] == [("k1", [0, 2])]
    out = run(make("A B", ABC, key_fn=None), records)
    assert [(m["key"], [e["i"] for e in m["events"]]) for m in out] == [(None, [1, 2])]


def test_errors_are_reported_and_records_skipped() -> None:
    def boom(r: Record) -> bool:
        if r.get("boom"):
            raise ValueError("condition failed")
        return bool(r["t"] == "b")

    cep = make("A B C", {"A": is_("a"), "B": boom, "C": is_("c")})
    records = letters("abc")
    bad = {"t": "b", "timestamp": 1500, "card": "c1", "i": 99, "boom": True}
    no_time = {"t": "b", "card": "c1", "i": 98}
    bad_time = {"t": "b", "card": "c1", "i": 97, "timestamp": "soon"}
    no_key = {"t": "b", "timestamp": 1500, "i": 96}
    errors: Errors = []
    # the failing events come where B's condition is evaluated; skipped, they do not break the match
    out = cep.process([records[0], bad, no_time, bad_time, no_key, records[1], records[2]], errors)
    assert [r for r, _ in errors] == [bad, no_time, bad_time, no_key]
    assert "condition failed" in str(errors[0][1])
    assert "timestamp" in str(errors[1][1])
    assert matched(out) == ["abc"]


def test_iso_timestamps_in_output() -> None:
    records = [
        {"t": "a", "timestamp": "2025-10-29T10:00:00Z", "card": "c"},
        {"t": "b", "timestamp": "2025-10-29T10:00:01.5Z", "card": "c"},
    ]
    out = run(make("A B", ABC), records)
    assert out[0]["start_time"] == 1_761_732_000_000
    assert out[0]["end_time"] == 1_761_732_001_500


def test_constructor_rejects() -> None:
    with pytest.raises(ValueError, match="not in the pattern"):
        make("A B", {"Z": is_("z")})
    with pytest.raises(ValueError):
        make("A B", ABC, contiguity="loose")
    with pytest.raises(ValueError):
        make("A", ABC, after_match="skip_to_last")
    with pytest.raises(ValueError):
        make("A", ABC, window_ms=0)


def test_state_is_json_and_restore_continues_identically() -> None:
    define = {"A": is_("a"), "B": is_("b"), "C": is_("c")}
    text = "abbxabbbcabxaabbbbbcab"
    records = [{"t": ch, "timestamp": 100 * i, "card": f"k{i % 3}", "i": i} for i, ch in enumerate(text)]
    batches = [records[i : i + 4] for i in range(0, len(records), 4)]
    for contiguity in ("strict", "relaxed"):
        for after_match in ("skip_past_last_row", "skip_to_next_row"):
            kw: dict[str, Any] = {
                "window_ms": 1500,
                "contiguity": contiguity,
                "after_match": after_match,
            }
            straight = make("A B+ C?", define, **kw)
            expected = [straight.process(b, []) for b in batches] + [straight.on_end()]
            for cut in range(1, len(batches)):
                store = MemoryStateStore()
                first = make("A B+ C?", define, store, **kw)
                got = [first.process(b, []) for b in batches[:cut]]
                snapshot = MemoryStateStore()
                for k, v in store.items():
                    snapshot.put(k, json.loads(json.dumps(v)))
                second = make("A B+ C?", define, MemoryStateStore(), **kw)
                second._store = snapshot
                second.restore()
                got += [second.process(b, []) for b in batches[cut:]] + [second.on_end()]
                assert got == expected, (contiguity, after_match, cut)
            assert any(expected)


# ---------------------------------------------------------------------------------------- reference


def reference_matches(
    events: list[Record],
    pattern: Pattern,
    define: dict[str, Pred],
    *,
    contiguity: str,
    after_match: str,
    window_ms: int | None,
) -> list[list[int]]:
    """Brute force over one key's finished sequence: for every start in order, the longest match
    (ties: more events, then the earliest events) by backtracking over the pattern's elements."""
    lo = [e.min for e in pattern.elements]
    hi = [e.max for e in pattern.elements]
    preds = [define.get(e.name) for e in pattern.elements]
    k = len(lo)
    n = len(events)

    def ok(j: int, x: int) -> bool:
        pred = preds[j]
        return pred is None or bool(pred(events[x]))

    def takers(i: int, c: int) -> list[int]:
        """Elements that may take the next event after ``c`` events of element ``i`` (-1: none yet)."""
        out = []
        if i >= 0 and (hi[i] is None or c < hi[i]):  # type: ignore[operator]
            out.append(i)
        if i < 0 or c >= lo[i]:
            for j in range(i + 1, k):
                out.append(j)
                if lo[j] > 0:
                    break
        return out

    def complete(i: int, c: int) -> bool:
        return c >= lo[i] and all(lo[j] == 0 for j in range(i + 1, k))

    def longest(p: int) -> list[int] | None:
        best: list[int] | None = None

        def consider(idxs: list[int]) -> None:
            nonlocal best
            if best is None or (idxs[-1], len(idxs), [-x for x in idxs]) > (
                best[-1],
                len(best),
                [-x for x in best],
            ):
                best = list(idxs)

        def fits(x: int) -> bool:
            return window_ms is None or events[x]["timestamp"] - events[p]["timestamp"] <= window_ms

        def rec(i: int, c: int, idxs: list[int]) -> None:
            if complete(i, c):
                consider(idxs)
            nxt = takers(i, c)
            x = idxs[-1] + 1
            while x < n and fits(x):
                can = [j for j in nxt if ok(j, x)]
                for j in can:
                    rec(j, c + 1 if j == i else 1, [*idxs, x])
                if can or contiguity == "strict":
                    return
                x += 1

        for j in takers(-1, 0):
            if ok(j, p):
                rec(j, 1, [p])
        return best

    found: list[list[int]] = []
    p = 0
    while p < n:
        m = longest(p)
        if m is None:
            p += 1
            continue
        found.append(m)
        p = m[-1] + 1 if after_match == "skip_past_last_row" else p + 1
    return found


def test_reference_matcher_sanity() -> None:
    events = letters("aabab")
    pattern = parse_pattern("A B")
    define = {"A": is_("a"), "B": is_("b")}
    assert reference_matches(
        events, pattern, define, contiguity="relaxed", after_match="skip_past_last_row", window_ms=None
    ) == [[0, 2], [3, 4]]
    assert reference_matches(
        events, pattern, define, contiguity="strict", after_match="skip_past_last_row", window_ms=None
    ) == [[1, 2], [3, 4]]


PREDICATES: list[tuple[str, Pred]] = [
    ("x", lambda r: bool(r["x"])),
    ("not x", lambda r: not r["x"]),
    ("y", lambda r: bool(r["y"])),
    ("z == 0", lambda r: r["z"] == 0),
    ("z >= 1", lambda r: r["z"] >= 1),
    ("x and y", lambda r: bool(r["x"] and r["y"])),
    ("x or z == 2", lambda r: bool(r["x"] or r["z"] == 2)),
]
QUANTIFIERS = ["", "", "?", "*", "+", "{2}", "{1,3}", "{0,2}", "{2,}"]


@st.composite
def patterns(draw: st.DrawFn) -> tuple[str, dict[str, int | None]]:
    size = draw(st.integers(min_value=1, max_value=4))
    parts = []
    for _ in range(size):
        name = draw(st.sampled_from(["A", "B", "C", "D"]))
        parts.append(name + draw(st.sampled_from(QUANTIFIERS)))
    text = " ".join(parts)
    names = sorted({p.rstrip("?*+{}0123456789,") for p in parts})
    conditions = {
        name: draw(st.one_of(st.none(), st.integers(min_value=0, max_value=len(PREDICATES) - 1)))
        for name in names
    }
    return text, conditions


@st.composite
def streams(draw: st.DrawFn) -> list[Record]:
    n = draw(st.integers(min_value=0, max_value=40))
    records = []
    ts = 0
    for i in range(n):
        ts += draw(st.integers(min_value=0, max_value=3))
        records.append(
            {
                "i": i,
                "k": draw(st.sampled_from(["p", "q", "r"])),
                "timestamp": ts,
                "x": draw(st.booleans()),
                "y": draw(st.booleans()),
                "z": draw(st.integers(min_value=0, max_value=2)),
            }
        )
    return records


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=patterns(),
    records=streams(),
    contiguity=st.sampled_from(["strict", "relaxed"]),
    after_match=st.sampled_from(["skip_past_last_row", "skip_to_next_row"]),
    window_ms=st.one_of(st.none(), st.integers(min_value=0, max_value=12)),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    restore_at=st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
)
def test_streaming_matches_reference(
    spec: tuple[str, dict[str, int | None]],
    records: list[Record],
    contiguity: str,
    after_match: str,
    window_ms: int | None,
    cuts: list[int],
    restore_at: int | None,
) -> None:
    text, conditions = spec
    try:
        pattern = parse_pattern(text)
    except PatternError:
        return  # e.g. only optional variables
    define = {name: PREDICATES[idx][1] for name, idx in conditions.items() if idx is not None}
    if window_ms == 0:
        window_ms = None

    def build(store: MemoryStateStore) -> CepTransformation:
        return CepTransformation(
            store,
            pattern=pattern,
            pattern_text=text,
            define=define,
            key_fn=lambda r: r["k"],
            window_ms=window_ms,
            contiguity=contiguity,  # type: ignore[arg-type]
            after_match=after_match,  # type: ignore[arg-type]
        )

    store = MemoryStateStore()
    cep = build(store)
    bounds = sorted({0, len(records), *(c for c in cuts if c <= len(records))})
    out: list[Record] = []
    errors: Errors = []
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if restore_at == n:
            snapshot = MemoryStateStore()
            for key, value in store.items():
                snapshot.put(key, json.loads(json.dumps(value)))
            store = snapshot
            cep = build(store)
        out += cep.process(records[lo:hi], errors)
    out += cep.on_end()
    assert errors == []

    got: dict[str, list[list[int]]] = defaultdict(list)
    for m in out:
        got[m["key"]].append([e["i"] for e in m["events"]])
        assert m["event_count"] == len(m["events"])
        assert m["start_time"] == m["events"][0]["timestamp"]
        assert m["end_time"] == m["events"][-1]["timestamp"]
        assert m["pattern"] == text
    expected: dict[str, list[list[int]]] = {}
    for key in ("p", "q", "r"):
        seq = [r for r in records if r["k"] == key]
        found = reference_matches(
            seq, pattern, define, contiguity=contiguity, after_match=after_match, window_ms=window_ms
        )
        if found:
            expected[key] = [[seq[j]["i"] for j in m] for m in found]
    assert dict(got) == expected
    assert [k for k, _ in store.items("k|")] == []


PRED_BY_NAME = dict(PREDICATES)


@pytest.mark.parametrize(
    ("text", "conditions", "fields", "first_match"),
    [
        (
            "A A? D{1,3} C*",
            {"A": "not x", "C": "not x", "D": "y"},
            [(0, 0, 2), (0, 1, 2), (0, 0, 0), (0, 1, 2), (1, 1, 1), (0, 1, 0)],
            [0, 1, 2, 3, 5],  # tied with [0, 1, 3, 4, 5]
        ),
        (
            "A{0,2} A{2,} B A{0,2}",
            {"A": "x", "B": "not x"},
            [(1, 1, 0), (1, 1, 2), (1, 1, 0), (0, 1, 0), (1, 1, 1), (0, 1, 1), (1, 1, 0)],
            [0, 1, 2, 3, 4, 6],  # tied with [0, 1, 2, 4, 5, 6]
        ),
        (
            "D{0,2} D{2} B A*",
            {"A": "z >= 1", "B": "z == 0", "D": "x and y"},
            [(1, 1, 1), (1, 0, 1), (1, 1, 2), (1, 1, 2), (1, 1, 0), (0, 0, 2), (1, 0, 0), (1, 0, 2)],
            [0, 2, 3, 4, 5, 7],  # tied with [0, 2, 3, 4, 6, 7]
        ),
        (
            "B{0,2} B A+",
            {"A": "z >= 1", "B": "z == 0"},
            [(0, 0, 0), (1, 1, 0), (1, 0, 2), (0, 0, 0), (0, 0, 1)],
            [0, 1, 2, 4],  # tied with [0, 1, 3, 4]
        ),
    ],
)
def test_relaxed_ties_prefer_the_earliest_events(
    text: str, conditions: dict[str, str], fields: list[tuple[int, int, int]], first_match: list[int]
) -> None:
    """Same end and length: the match with the earliest events wins (streaming and reference)."""
    define = {name: PRED_BY_NAME[c] for name, c in conditions.items()}
    records = [
        {"i": i, "k": "p", "timestamp": i, "x": bool(x), "y": bool(y), "z": z}
        for i, (x, y, z) in enumerate(fields)
    ]
    for after_match in ("skip_past_last_row", "skip_to_next_row"):
        cep = CepTransformation(
            MemoryStateStore(),
            pattern=parse_pattern(text),
            pattern_text=text,
            define=define,
            key_fn=lambda r: r["k"],
            contiguity="relaxed",
            after_match=after_match,
        )
        got = positions(run(cep, records))
        expected = reference_matches(
            records,
            parse_pattern(text),
            define,
            contiguity="relaxed",
            after_match=after_match,
            window_ms=None,
        )
        assert got == expected
        assert got[0] == first_match
