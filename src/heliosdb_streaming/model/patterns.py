"""The CEP pattern language: ``"A B+ C{2,3}"`` parsed into a :class:`Pattern` (pure, no I/O).

Pattern syntax: whitespace-separated variables (identifiers), each optionally followed by one
quantifier ``?``, ``*``, ``+``, ``{n}``, ``{n,}`` or ``{n,m}``. No groups or alternation. A variable
may appear more than once. The job model validates patterns with it at submit; the runtime's
automaton (``runtime/transformations/cep.py``) runs the parsed pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Bounds on the automaton: each event may advance every state of every live partial match, so the
# pattern's size is work per event. A pattern expands to sum(max or min) states.
MAX_REPEAT = 100
MAX_ELEMENTS = 50
MAX_STATES = 1_000

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACES = re.compile(r"\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}")
_QUANTIFIER_START = "?*+{"


class PatternError(ValueError):
    """An invalid pattern; ``position`` is the 0-based offset of the problem in the text."""

    def __init__(self, message: str, position: int, text: str = "") -> None:
        self.message = message
        self.position = position
        self.text = text
        detail = f" in {text!r}" if text else ""
        super().__init__(f"{message} at position {position}{detail}")


@dataclass(frozen=True, slots=True)
class PatternElement:
    """One variable of the pattern with its quantifier bounds (``max`` None = unbounded)."""

    name: str
    min: int
    max: int | None
    quantifier: str = ""

    def __str__(self) -> str:
        return self.name + self.quantifier


@dataclass(frozen=True, slots=True)
class Pattern:
    elements: tuple[PatternElement, ...]

    @property
    def variables(self) -> list[str]:
        """The variable names in pattern order (a repeated variable appears again)."""
        return [e.name for e in self.elements]

    @property
    def bounds(self) -> list[tuple[int, int | None]]:
        """``(min, max)`` per element, ``max`` None for unbounded."""
        return [(e.min, e.max) for e in self.elements]

    def __str__(self) -> str:
        return " ".join(str(e) for e in self.elements)


def parse_pattern(text: str) -> Pattern:
    """Parses ``"A B+ C{2,3}"``; raises :class:`PatternError` with the position of the problem."""
    if not isinstance(text, str):
        raise PatternError("pattern must be a string", 0)
    elements: list[PatternElement] = []
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        if len(elements) > MAX_ELEMENTS:  # refuse a huge pattern after reading a bounded part of it
            raise PatternError(f"pattern has more than {MAX_ELEMENTS} elements", pos, text[:200])
        m = _IDENT.match(text, pos)
        if m is None:
            ch = text[pos]
            if ch in _QUANTIFIER_START:
                raise PatternError(f"quantifier {ch!r} must follow a variable", pos, text)
            if ch in "()|":
                raise PatternError(
                    f"{ch!r} is not supported: a pattern is a sequence of variables with optional "
                    "quantifiers (no groups or alternation)",
                    pos,
                    text,
                )
            raise PatternError(f"unexpected {ch!r}, expected a variable name", pos, text)
        name = m.group()
        pos = m.end()
        q_pos = pos
        while q_pos < n and text[q_pos].isspace():
            q_pos += 1
        lo, quantifier = 1, ""
        hi: int | None = 1
        if q_pos < n and text[q_pos] in _QUANTIFIER_START:
            lo, hi, quantifier, pos = _parse_quantifier(text, q_pos)
            if pos < n and text[pos] in _QUANTIFIER_START:
                what = "reluctant quantifiers are" if text[pos] == "?" else "a second quantifier is"
                raise PatternError(f"{what} not supported", pos, text)
        elif pos < n and not text[pos].isspace():
            ch = text[pos]
            if ch in "()|":
                raise PatternError(
                    f"{ch!r} is not supported: a pattern is a sequence of variables with optional "
                    "quantifiers (no groups or alternation)",
                    pos,
                    text,
                )
            raise PatternError(f"unexpected {ch!r} after variable {name!r}", pos, text)
        elements.append(PatternElement(name, lo, hi, quantifier))
    if not elements:
        raise PatternError("pattern is empty", 0, text)
    if len(elements) > MAX_ELEMENTS:
        raise PatternError(f"pattern has more than {MAX_ELEMENTS} elements", 0, text[:200])
    states = sum(e.max if e.max is not None else max(e.min, 1) for e in elements)
    if states > MAX_STATES:
        raise PatternError(
            f"pattern expands to {states} automaton states, at most {MAX_STATES}: "
            "lower the quantifier bounds",
            0,
            text[:200],
        )
    if all(e.min == 0 for e in elements):
        raise PatternError(
            "pattern can match an empty sequence: at least one variable needs a minimum of one "
            "(e.g. 'A+' instead of 'A*')",
            0,
            text,
        )
    return Pattern(tuple(elements))


def _parse_quantifier(text: str, pos: int) -> tuple[int, int | None, str, int]:
    ch = text[pos]
    if ch == "?":
        return 0, 1, "?", pos + 1
    if ch == "*":
        return 0, None, "*", pos + 1
    if ch == "+":
        return 1, None, "+", pos + 1
    m = _BRACES.match(text, pos)
    if m is None:
        raise PatternError("invalid quantifier: use {n}, {n,} or {n,m}", pos, text)
    lo = int(m.group(1))
    hi: int | None
    if m.group(2) is None:
        hi, quantifier = lo, f"{{{lo}}}"
    elif m.group(3) == "":
        hi, quantifier = None, f"{{{lo},}}"
    else:
        hi = int(m.group(3))
        quantifier = f"{{{lo},{hi}}}"
    if hi is not None and lo > hi:
        raise PatternError(f"invalid quantifier {quantifier}: minimum is larger than maximum", pos, text)
    if hi is not None and hi < 1:
        raise PatternError(f"invalid quantifier {quantifier}: maximum must be at least 1", pos, text)
    if lo > MAX_REPEAT or (hi is not None and hi > MAX_REPEAT):
        raise PatternError(
            f"invalid quantifier {quantifier}: counts above {MAX_REPEAT} are not supported", pos, text
        )
    return lo, hi, quantifier, m.end()
